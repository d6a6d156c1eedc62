"""``RegistryControl``: fetch, start, stop and probe the test schema registry (see the package
docstring)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from tools.kafka_broker.processes import pid_runs, spawn_detached, tail, wait_exit

VERSION = "3.0.9"
ARTIFACT = f"io.apicurio:apicurio-registry-app:{VERSION}:tar.gz:all"
DEFAULT_URL = "http://127.0.0.1:8081/apis/ccompat/v7"
# A cold JVM on a busy machine: Apicurio answers in about 3 s on an idle one.
READY_TIMEOUT = 180.0
STOP_TIMEOUT = 20.0
# A test registry: a small heap, and the JIT's quick tier only, which halves the start.
JVM_OPTIONS = ("-Xmx384m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
ROOT = Path(__file__).resolve().parents[2]

State = Literal["ready", "closed", "other"]


class RegistryError(Exception):
    """The test schema registry could not be fetched, started, stopped or reached."""


def say(message: str) -> None:
    print(f"schema_registry: {message}", flush=True)


def probe(url: str) -> tuple[State, str]:
    """What answers at ``url``: a schema registry (its subjects list), nothing, or another
    program; with a word of detail."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/subjects", timeout=3) as answer:
            body = json.load(answer)
    except urllib.error.HTTPError as error:
        return "other", f"HTTP {error.code} at {url}/subjects"
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, ConnectionRefusedError):
            return "closed", "connection refused"
        return "other", str(reason)
    except ValueError:
        return "other", "an answer that is not JSON"
    if not isinstance(body, list):
        return "other", "an answer that is not a list of subjects"
    return "ready", f"{len(body)} subjects"


def register(
    url: str,
    subject: str,
    schema: str,
    schema_type: str = "AVRO",
    references: Sequence[Mapping[str, object]] = (),
) -> int:
    """Register ``schema`` (its text) under ``subject`` at the registry's API ``url``, with the
    schemas it refers to (each ``{"name", "subject", "version"}``); its id."""
    body = {"schema": schema, "schemaType": schema_type, "references": list(references)}
    request = urllib.request.Request(
        f"{url.rstrip('/')}/subjects/{subject}/versions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        schema_id: int = json.load(answer)["id"]
    return schema_id


class RegistryControl:
    """Start and stop the test registry at ``url``. Blocking: from async code, call the methods
    through ``asyncio.to_thread``."""

    def __init__(self, url: str | None = None, run_dir: Path | None = None) -> None:
        self.url = (url or os.environ.get("SCHEMA_REGISTRY_URL") or DEFAULT_URL).rstrip("/")
        parts = urllib.parse.urlsplit(self.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.run_dir = run_dir or Path(
            os.environ.get("SCHEMA_REGISTRY_RUN_DIR") or ROOT / ".run" / "schema-registry"
        )
        self.state_file = self.run_dir / "state.json"
        self.log_file = self.run_dir / "registry.log"
        self.data_file = self.run_dir / "data" / "registry"
        self.dist_dir = ROOT / ".cache" / f"apicurio-registry-{VERSION}"

    @property
    def runner_jar(self) -> Path:
        return self.dist_dir / f"apicurio-registry-app-{VERSION}-runner.jar"

    # -- the distribution --------------------------------------------------------------

    def fetch(self) -> None:
        """Fetch and unpack the distribution into .cache, once."""
        if self.runner_jar.is_file():
            return
        mvn = os.environ.get("MVN") or shutil.which("mvn")
        if mvn is None:
            raise RegistryError("mvn is needed to fetch Apicurio Registry (or set MVN)")
        self.dist_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.dist_dir.parent) as folder:
            say(f"fetching {ARTIFACT} with Maven (once, into {self.dist_dir})")
            result = subprocess.run(
                [mvn, "-q", "-B", "dependency:copy", f"-Dartifact={ARTIFACT}",
                 f"-DoutputDirectory={folder}"],
                capture_output=True, text=True, check=False, cwd=folder,
            )  # fmt: skip
            archives = list(Path(folder).glob("*.tar.gz"))
            if result.returncode != 0 or not archives:
                raise RegistryError(f"Maven could not fetch {ARTIFACT}:\n{result.stdout[-3000:]}")
            unpacked = Path(folder, "unpacked")
            with tarfile.open(archives[0]) as archive:
                if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
                    archive.extractall(unpacked, filter="data")
                else:
                    archive.extractall(unpacked)
            if not self.runner_jar.is_file():  # another process may have won the race
                unpacked.rename(self.dist_dir)

    # -- the process ----------------------------------------------------------------------

    def _pid(self) -> int | None:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        pid = state.get("pid") if state.get("url") == self.url else None
        return pid if isinstance(pid, int) and pid_runs(pid, str(self.data_file)) else None

    def owned(self) -> bool:
        return self.state_file.exists()

    def up(self, timeout: float = READY_TIMEOUT) -> bool:
        """Make sure a registry answers at our URL; True if we started it."""
        state, detail = probe(self.url)
        if state == "ready":
            say(f"a schema registry already answers at {self.url} ({detail}); starting none")
            return False
        if state != "closed" and self._pid() is None:
            raise RegistryError(
                f"{self.url}: another program answers ({detail}); stop it, or point"
                " SCHEMA_REGISTRY_URL at a free port"
            )
        self.fetch()
        if self._pid() is None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        self.start(timeout)
        return True

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start our registry (again, on its data) and wait until it answers."""
        if self._pid() is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            java = os.environ.get("JAVA") or shutil.which("java") or "java"
            command = [
                java, *JVM_OPTIONS,
                f"-Dquarkus.http.host={self.host}", f"-Dquarkus.http.port={self.port}",
                f"-Dapicurio.datasource.url=jdbc:h2:file:{self.data_file}",
                "-jar", str(self.runner_jar),
            ]  # fmt: skip
            pid = spawn_detached(command, self.log_file, self.run_dir)
            self.state_file.write_text(json.dumps({"url": self.url, "pid": pid}) + "\n")
            say(f"started Apicurio Registry {VERSION} at {self.url} (pid {pid})")
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            state, detail = probe(self.url)
            if state == "ready":
                return
            if not self.owned():
                raise RegistryError(f"nothing answers as a registry at {self.url} ({detail})")
            if self._pid() is None:
                raise RegistryError(f"our registry exited:\n{tail(self.log_file)}")
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"no registry at {self.url} after {timeout:.0f}s ({detail}):\n"
                    f"{tail(self.log_file)}"
                )
            time.sleep(0.3)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop our registry, keeping its data (``start`` brings it back)."""
        pid = self._pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        if not wait_exit(pid, timeout):
            os.kill(pid, signal.SIGKILL)
            wait_exit(pid, timeout)

    def down(self) -> None:
        """Stop our registry and delete its data; leave anyone else's alone."""
        if not self.owned():
            say(f"no registry of ours at {self.url}; nothing to stop")
            return
        self.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        say(f"stopped our registry at {self.url}")
