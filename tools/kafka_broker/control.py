"""Control of the broker this harness owns: ``BrokerControl`` (up, down, stop, kill, start),
run natively (a JVM on jars Maven fetched) or with docker compose.

Everything the harness started is recorded in .run/kafka/state.json, so that ``down``, ``kill``
and ``start`` act on exactly that broker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Literal

from tools.kafka_broker.config import (
    SASL_PORT_OFFSET,
    SSL_PORT_OFFSET,
    new_cluster_id,
    render_server_properties,
    scram_arguments,
)
from tools.kafka_broker.errors import BrokerError
from tools.kafka_broker.processes import LOG_TAIL_LINES, pid_runs, spawn_detached, tail, wait_exit
from tools.kafka_broker.protocol import (
    READY_TIMEOUT,
    Probe,
    parse_bootstrap,
    port_is_free,
    probe,
    same_address,
    wait_until_ready,
)
from tools.kafka_broker.tls import make_tls_files

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
STOP_TIMEOUT = 30.0
JVM_HEAP = "-Xmx512m"
COMPOSE_SERVICE = "kafka"

# The repository: broker/ holds the configuration, .run/ and .cache/ the broker's files.
ROOT = Path(__file__).resolve().parents[2]

Runner = Literal["native", "docker"]


@dataclasses.dataclass
class State:
    """What .run/kafka/state.json records about the broker we started."""

    runner: Runner
    bootstrap: str
    kafka_version: str
    pid: int | None = None  # native only; None while stopped
    compose_project: str | None = None  # docker only
    # The secure listeners; None in the state of a harness that predates them.
    sasl_bootstrap: str | None = None
    ssl_bootstrap: str | None = None
    tls_dir: str | None = None


def docker_engine_answers() -> bool:
    """Whether a Docker engine (not just the client) and the compose plugin are usable."""
    if shutil.which("docker") is None:
        return False
    for command in (["docker", "info"], ["docker", "compose", "version"]):
        try:
            result = subprocess.run(command, capture_output=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if result.returncode != 0:
            return False
    return True


class BrokerControl:
    """Start, stop, kill and restart the test broker at ``bootstrap``.

    Every method that changes the broker blocks until it is done (``start`` until the
    broker serves requests again); call them through ``asyncio.to_thread`` from async
    code. Only a broker this harness started (recorded in .run/kafka/state.json) can be
    stopped, killed or restarted; ``up`` also accepts a broker someone else runs.
    """

    def __init__(
        self, bootstrap: str | None = None, root: Path = ROOT, run_dir: Path | None = None
    ) -> None:
        self.bootstrap = bootstrap or os.environ.get("KAFKA_BOOTSTRAP") or DEFAULT_BOOTSTRAP
        self.host, self.port = parse_bootstrap(self.bootstrap)
        self.root = root
        self.broker_dir = root / "broker"
        # ``run_dir`` or KAFKA_RUN_DIR: a second broker of this checkout (the multi-host soak's,
        # in a network namespace) keeps its files apart from the first one's.
        self.run_dir = run_dir or Path(os.environ.get("KAFKA_RUN_DIR") or root / ".run" / "kafka")
        self.state_file = self.run_dir / "state.json"
        self.pid_file = self.run_dir / "broker.pid"
        self.log_file = self.run_dir / "broker.log"
        self.config_file = self.run_dir / "server.properties"
        self.data_dir = self.run_dir / "data"
        self.tls_dir = self.run_dir / "tls"
        self.compose_file = root / "docker-compose.yml"

    # -- facts ---------------------------------------------------------------------

    @property
    def kafka_version(self) -> str:
        return (self.broker_dir / "VERSION").read_text().strip()

    @property
    def libs_dir(self) -> Path:
        return self.root / ".cache" / f"kafka-{self.kafka_version}" / "libs"

    @property
    def tools_dir(self) -> Path:
        """Kafka's command-line tools and their dependencies (``fetch_tool_jars``)."""
        return self.root / ".cache" / f"kafka-{self.kafka_version}" / "tools"

    @property
    def controller_port(self) -> int:
        return int(os.environ.get("KAFKA_CONTROLLER_PORT") or self.port + 1)

    @property
    def sasl_port(self) -> int:
        return self.port + SASL_PORT_OFFSET

    @property
    def ssl_port(self) -> int:
        return self.port + SSL_PORT_OFFSET

    def new_state(self, runner: Runner, compose_project: str | None = None) -> State:
        """The record of a native broker about to start here, with its secure listeners."""
        return State(
            runner,
            self.bootstrap,
            self.kafka_version,
            compose_project=compose_project,
            sasl_bootstrap=f"{self.host}:{self.sasl_port}",
            ssl_bootstrap=f"{self.host}:{self.ssl_port}",
            tls_dir=str(self.tls_dir),
        )

    def load_state(self) -> State | None:
        """The recorded broker, if it is the one at our bootstrap address."""
        try:
            state = State(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return state if same_address(state.bootstrap, self.bootstrap) else None

    def _save_state(self, state: State) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(dataclasses.asdict(state), indent=2) + "\n")
        temporary.replace(self.state_file)
        if state.pid is None:
            self.pid_file.unlink(missing_ok=True)
        else:
            self.pid_file.write_text(f"{state.pid}\n")

    def owned(self) -> bool:
        """Whether the broker at our bootstrap address was started by this harness."""
        return self.load_state() is not None

    def is_running(self) -> bool:
        """Whether our broker's process (or container) is running, ready or not."""
        state = self.load_state()
        if state is None:
            return False
        if state.runner == "docker":
            result = self._compose(state, "ps", "--status", "running", "-q", COMPOSE_SERVICE)
            return bool(result.stdout.strip())
        return state.pid is not None and self._is_our_java(state.pid)

    def _is_our_java(self, pid: int) -> bool:
        return pid_runs(pid, "kafka.Kafka", str(self.config_file))

    def describe(self) -> str:
        state = self.load_state()
        if state is None:
            return "not started by this harness"
        where = f"pid {state.pid}" if state.pid else "stopped"
        if state.runner == "docker":
            where = f"compose project {state.compose_project}"
        running = "running" if self.is_running() else "not running"
        return f"ours: {state.runner}, {where}, {running}, Kafka {state.kafka_version}"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines the broker logged (native log file or container log)."""
        state = self.load_state()
        if state is not None and state.runner == "docker":
            result = self._compose(
                state, "logs", "--no-color", "--tail", str(lines), COMPOSE_SERVICE
            )
            return (result.stdout + result.stderr).rstrip()
        return tail(self.log_file, lines)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> Probe:
        state = self.load_state()
        still_alive = self.is_running if state is not None else None
        try:
            return wait_until_ready(self.bootstrap, timeout, still_alive)
        except BrokerError as exc:
            raise BrokerError(str(exc), self.log_tail() if state else "") from None

    # -- up and down -----------------------------------------------------------------

    def up(self, runner: str | None = None, timeout: float = READY_TIMEOUT) -> bool:
        """Make sure a broker serves requests at our address; True if we started it.

        Starts nothing when a Kafka broker (ours or anyone's) already answers, and
        refuses when another program holds the port.
        """
        current = probe(self.bootstrap)
        if current.state == "starting" or (current.state == "silent" and self.is_running()):
            # A broker (ours or not) that is starting: wait for it, it will do.
            current = self.wait_ready(timeout)
        elif current.state == "silent":
            # A JVM binds its port seconds before it serves requests; give what may be
            # a starting broker the benefit of the doubt before calling the port taken.
            say(
                f"something at {self.bootstrap} accepts connections but does not answer; "
                f"waiting 10 s in case it is a Kafka broker still starting"
            )
            with contextlib.suppress(BrokerError):
                current = wait_until_ready(self.bootstrap, timeout=10)
        if current.state == "ready":
            whose = self.describe() if self.owned() else "external: not started by this harness"
            say(f"a Kafka broker already answers at {self.bootstrap} ({whose}); starting none")
            return False
        if current.state != "closed" or not port_is_free(self.host, self.port):
            raise BrokerError(
                f"port {self.port} on {self.host} is in use by another program, which does "
                f"not answer as a Kafka broker ({current.detail}). Stop that program, or "
                f"point KAFKA_BOOTSTRAP at a free port."
            )
        self._forget_stale()
        chosen = runner or os.environ.get("KAFKA_RUNNER") or "auto"
        if chosen == "auto":
            chosen = "docker" if docker_engine_answers() else "native"
        if chosen == "docker":
            self._up_docker(timeout)
        elif chosen == "native":
            self._up_native(timeout)
        else:
            raise BrokerError(f"KAFKA_RUNNER must be docker, native or auto, not {chosen!r}")
        return True

    def down(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop our broker, if any, and delete its data; leave an external one alone."""
        state = self.load_state()
        if state is None:
            say(f"no broker of ours at {self.bootstrap}; nothing to stop")
            return
        if state.runner == "docker":
            self._compose(state, "down", "--volumes", "--timeout", str(int(timeout)), check=True)
        else:
            self.stop(timeout)
            shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.tls_dir, ignore_errors=True)
        self.pid_file.unlink(missing_ok=True)
        self.state_file.unlink(missing_ok=True)
        say(f"stopped the {state.runner} broker at {self.bootstrap}")

    def _forget_stale(self) -> None:
        """Drop the record of a broker of ours that is no longer running."""
        state = self.load_state()
        if state is None:
            return
        if state.runner == "docker":
            self._compose(state, "down", "--volumes", "--timeout", "5")
        elif state.pid is not None and self._is_our_java(state.pid):
            # Running, but neither answering nor starting: it is wedged. Stop it.
            self.stop()
        self.pid_file.unlink(missing_ok=True)
        self.state_file.unlink(missing_ok=True)

    # -- native path -------------------------------------------------------------------

    def _up_native(self, timeout: float) -> None:
        java = os.environ.get("JAVA") or shutil.which("java")
        if java is None:
            raise BrokerError("java not found: install a JDK (17 or later), or set JAVA")
        if not port_is_free(self.host, self.controller_port):
            raise BrokerError(
                f"controller port {self.controller_port} on {self.host} is in use by "
                f"another program; set KAFKA_CONTROLLER_PORT to a free port"
            )
        self._require_free_secure_ports()
        self.fetch_jars()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True)
        make_tls_files(self.tls_dir, self.host)
        template = (self.broker_dir / "server.properties").read_text()
        self.config_file.write_text(
            render_server_properties(
                template,
                host=self.host,
                port=self.port,
                controller_port=self.controller_port,
                log_dir=self.data_dir,
                tls_dir=self.tls_dir,
            )
        )
        self.log_file.write_text("")
        format_command = [java, "-cp", f"{self.libs_dir}/*", "kafka.tools.StorageTool"]
        format_command += ["format", "-t", new_cluster_id(), "-c", str(self.config_file)]
        format_command += scram_arguments()
        formatted = subprocess.run(format_command, capture_output=True, text=True, check=False)
        if formatted.returncode != 0:
            raise BrokerError(
                "formatting the broker's data directory failed",
                (formatted.stdout + formatted.stderr)[-4000:],
            )
        self._save_state(self.new_state("native"))
        say(f"starting Kafka {self.kafka_version} (native JVM) at {self.bootstrap}")
        self.start(timeout)

    def _require_free_secure_ports(self) -> None:
        for name, port in (("SASL_PLAINTEXT", self.sasl_port), ("SSL", self.ssl_port)):
            if not port_is_free(self.host, port):
                raise BrokerError(
                    f"port {port} on {self.host} (the {name} listener, KAFKA_BOOTSTRAP's port "
                    f"+ {port - self.port}) is in use by another program; point "
                    f"KAFKA_BOOTSTRAP at a port whose next three ports are free too"
                )

    def fetch_jars(self) -> Path:
        """Download the broker's jars with Maven, once; later runs reuse the cache."""
        return self._fetch_with_maven(
            "pom.xml", self.libs_dir, f"kafka_2.13-{self.kafka_version}.jar", "broker"
        )

    def fetch_tool_jars(self) -> Path:
        """Download Kafka's command-line tools (kafka-tools: the consumer-group command) and
        their runtime dependencies with Maven, once, beside the broker's jars."""
        return self._fetch_with_maven(
            "tools-pom.xml", self.tools_dir, f"kafka-tools-{self.kafka_version}.jar", "tools"
        )

    def _fetch_with_maven(self, pom: str, target: Path, marker: str, what: str) -> Path:
        """Copy the runtime dependencies of ``pom`` into ``target`` unless ``marker`` is there.

        The cache may be shared by several checkouts (a symbolic link): a complete directory is
        only ever replaced by a complete one, and nothing else in the cache is touched.
        """
        if (target / marker).is_file():
            return target
        mvn = os.environ.get("MVN") or shutil.which("mvn")
        if mvn is None:
            raise BrokerError(f"mvn not found: install Maven to fetch Kafka's {what} jars")
        say(f"fetching the {what} jars of Kafka {self.kafka_version} with Maven into {target}")
        # Into a scratch directory first, so that an interrupted download never looks
        # like a complete cache.
        scratch = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(scratch, ignore_errors=True)
        command = [mvn, "-q", "-B", "-f", str(self.broker_dir / pom)]
        command += ["dependency:copy-dependencies", "-DincludeScope=runtime"]
        command += [f"-Dkafka.version={self.kafka_version}", f"-DoutputDirectory={scratch}"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            raise BrokerError(f"Maven could not fetch the Kafka {what} jars", result.stdout[-4000:])
        if (target / marker).is_file():
            # Another checkout sharing the cache finished first: keep its copy.
            shutil.rmtree(scratch, ignore_errors=True)
            return target
        shutil.rmtree(target, ignore_errors=True)  # an incomplete copy, never a complete one
        scratch.replace(target)
        return target

    def _java_command(self) -> list[str]:
        java = os.environ.get("JAVA") or shutil.which("java") or "java"
        log4j = self.broker_dir / "log4j2.properties"
        return [
            java,
            JVM_HEAP,
            "-XX:+ExitOnOutOfMemoryError",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{self.libs_dir}/*",
            "kafka.Kafka",
            str(self.config_file),
        ]

    # -- docker path -------------------------------------------------------------------

    def _compose(
        self, state: State, *arguments: str, check: bool = False, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        command = ["docker", "compose", "-f", str(self.compose_file)]
        command += ["-p", state.compose_project or "sqlstate-kafka", *arguments]
        # docker-compose.yml reads the version, host and port from these variables.
        # Docker publishes ports on IP addresses only, not on names like localhost.
        environment = dict(
            os.environ,
            KAFKA_VERSION=state.kafka_version,
            KAFKA_HOST="127.0.0.1" if self.host == "localhost" else self.host,
            KAFKA_PORT=str(self.port),
        )
        result = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise BrokerError(f"{' '.join(command)} failed", result.stdout + result.stderr)
        return result

    def _up_docker(self, timeout: float) -> None:
        state = State(
            "docker",
            self.bootstrap,
            self.kafka_version,
            compose_project=f"sqlstate-kafka-{self.port}",
        )
        self._save_state(state)
        say(f"starting Kafka {self.kafka_version} (docker compose) at {self.bootstrap}")
        try:
            self._compose(state, "up", "-d", "--wait", check=True, timeout=timeout + 600)
            self.wait_ready(timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                say(self.log_tail())
                self._compose(state, "down", "--volumes", "--timeout", "5")
            self.state_file.unlink(missing_ok=True)
            raise

    # -- faults ------------------------------------------------------------------------

    def _require_state(self) -> State:
        state = self.load_state()
        if state is None:
            raise BrokerError(
                f"the broker at {self.bootstrap} was not started by this harness, so it "
                f"cannot be stopped or restarted from here (start one with `make broker-up`)"
            )
        return state

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop our broker gracefully (SIGTERM, SIGKILL after ``timeout``); keep its data."""
        state = self._require_state()
        if state.runner == "docker":
            self._compose(state, "stop", "--timeout", str(int(timeout)), COMPOSE_SERVICE)
            return
        if state.pid is not None and self._is_our_java(state.pid):
            os.kill(state.pid, signal.SIGTERM)
            if not wait_exit(state.pid, timeout):
                say(f"the broker (pid {state.pid}) ignored SIGTERM for {timeout:.0f} s; killing")
                os.kill(state.pid, signal.SIGKILL)
                wait_exit(state.pid, 10)
        self._save_state(dataclasses.replace(state, pid=None))

    def kill(self) -> None:
        """Kill our broker at once (SIGKILL), as a crash would; keep its data."""
        state = self._require_state()
        if state.runner == "docker":
            self._compose(state, "kill", "-s", "SIGKILL", COMPOSE_SERVICE, check=True)
            return
        if state.pid is not None and self._is_our_java(state.pid):
            os.kill(state.pid, signal.SIGKILL)
            if not wait_exit(state.pid, 10):
                raise BrokerError(f"the broker (pid {state.pid}) survived SIGKILL")
        self._save_state(dataclasses.replace(state, pid=None))

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start our stopped broker on its existing data; return once it serves requests.

        Does nothing but wait when it is running already.
        """
        state = self._require_state()
        if state.runner == "docker":
            self._compose(state, "start", COMPOSE_SERVICE, check=True)
            self.wait_ready(timeout)
            return
        if state.pid is None or not self._is_our_java(state.pid):
            with self.log_file.open("a") as log:
                log.write(f"\n=== kafka_broker: starting the broker at {time.ctime()} ===\n")
            pid = spawn_detached(self._java_command(), self.log_file, self.run_dir)
            state = dataclasses.replace(state, pid=pid)
            self._save_state(state)
        try:
            probe_result = self.wait_ready(timeout)
        except BaseException:
            # Failed or interrupted: leave nothing half-started behind.
            if state.pid is not None and self._is_our_java(state.pid):
                os.kill(state.pid, signal.SIGKILL)
                wait_exit(state.pid, 10)
            self._save_state(dataclasses.replace(state, pid=None))
            raise
        say(f"broker ready at {self.bootstrap} (pid {state.pid}; {probe_result.detail})")


def say(message: str) -> None:
    print(f"kafka_broker: {message}", flush=True)
