"""Real network partitions for the multi-host soak: the broker and each host in a network
namespace of its own, on one bridge, so that a host can be cut off from the broker while its
daemon keeps running (the true zombie, which SIGSTOP only imitates), and healed.

    bridge sqs-br0 (10.213.77.254, in the root namespace: the soak's producers and oracle)
      sqs-vb  <-> eth0 in namespace sqs-broker (10.213.77.1: the broker)
      sqs-v0  <-> eth0 in namespace sqs-host-0 (10.213.77.10: host 0's daemon)
      sqs-v1  <-> eth0 in namespace sqs-host-1 (10.213.77.11) ...

The subnet exists only on that bridge and in those namespaces: no traffic leaves the machine.
A partition sets the root end of a host's veth down: its packets go nowhere, its connections
stall rather than fail, exactly as when a switch port dies. Every name starts with ``sqs-``;
``Network.create`` first removes what a crashed run left behind, and ``remove`` runs at the end
whatever happened. One run at a time per machine (a lock file), since the names are fixed.

Needs root and ``ip netns`` (iproute2); ``require`` says clearly when either is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.support.broker import AsyncBrokerControl
from tools.kafka_broker import READY_TIMEOUT, BrokerControl

PREFIX = "sqs-"
BRIDGE = f"{PREFIX}br0"
SUBNET = "10.213.77"
ROOT_ADDRESS = f"{SUBNET}.254"
BROKER_ADDRESS = f"{SUBNET}.1"
FIRST_HOST = 10  # host i is .(10 + i)
MAX_HOSTS = 200
LOCK_FILE = Path("/run/lock/sqlstate-soak-netns.lock")
COMMAND_TIMEOUT_S = 20.0
ROOT = Path(__file__).resolve().parents[2]


class NetnsUnavailable(RuntimeError):
    """Network namespaces were asked for and this machine (or user) cannot make them."""


@dataclass(frozen=True)
class Namespace:
    """One namespace: its name, the root end of its veth (what a partition sets down), and the
    address of its own end."""

    name: str
    link: str
    address: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace; ``ip netns exec`` execs it, so the pid is its own
        (kill -9 and SIGSTOP reach the program itself)."""
        return ["ip", "netns", "exec", self.name, *argv]


def ip(*arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["ip", *arguments], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    if check and result.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(arguments)}: {result.stderr.strip()}")
    return result


def require() -> None:
    """Fail with a clear message unless this process can make namespaces, veths and bridges."""
    if os.geteuid() != 0:
        raise NetnsUnavailable(
            "network partitions need root (ip netns, veth pairs, a bridge); run as root, or"
            " without them: --no-netns (make soak-multihost NETNS=0)"
        )
    if shutil.which("ip") is None:
        raise NetnsUnavailable(
            "network partitions need iproute2's `ip` command; install it, or run without"
            " them: --no-netns (make soak-multihost NETNS=0)"
        )
    probe = f"{PREFIX}probe"
    ip("netns", "del", probe, check=False)
    try:
        ip("netns", "add", probe)
    except NetnsUnavailable as error:
        raise NetnsUnavailable(
            f"this machine does not allow network namespaces ({error}); run without them:"
            " --no-netns (make soak-multihost NETNS=0)"
        ) from None
    finally:
        ip("netns", "del", probe, check=False)


def our_namespaces() -> list[str]:
    listed = ip("netns", "list").stdout.split()
    return [name for name in listed if name.startswith(PREFIX)]


def stop_processes_in(namespace: str) -> None:
    """kill -9 whatever still runs in one of our namespaces (a crashed run's broker or daemon):
    a namespace deleted under a running process lives on with it."""
    for pid in ip("netns", "pids", namespace, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def remove_all() -> None:
    """Every namespace, veth and the bridge of ours, with what runs inside; idempotent."""
    for name in our_namespaces():
        stop_processes_in(name)
        ip("netns", "del", name, check=False)
    links = ip("-o", "link", "show").stdout.splitlines()
    for line in links:
        # "12: sqs-v0@if11: <...>": the name ends at '@' (a veth) or ':'.
        name = line.split(":", 2)[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(PREFIX):
            ip("link", "del", name, check=False)


@dataclass
class Network:
    """The bridge, the broker's namespace and one namespace per host, made by ``create``."""

    broker: Namespace
    hosts: list[Namespace]
    cut: set[int] = field(default_factory=set)
    lock: IO[str] | None = None

    @classmethod
    def create(cls, hosts: int) -> Network:
        if not 0 < hosts <= MAX_HOSTS:
            raise ValueError(f"between 1 and {MAX_HOSTS} hosts, not {hosts}")
        require()
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        lock = LOCK_FILE.open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise NetnsUnavailable(
                f"another soak holds {LOCK_FILE} and the {PREFIX}* namespaces; wait for it"
            ) from None
        network = cls(
            broker=Namespace(f"{PREFIX}broker", f"{PREFIX}vb", BROKER_ADDRESS),
            hosts=[
                Namespace(f"{PREFIX}host-{i}", f"{PREFIX}v{i}", f"{SUBNET}.{FIRST_HOST + i}")
                for i in range(hosts)
            ],
            lock=lock,
        )
        try:
            remove_all()  # a crashed run's leftovers
            ip("link", "add", BRIDGE, "type", "bridge")
            ip("addr", "add", f"{ROOT_ADDRESS}/24", "dev", BRIDGE)
            ip("link", "set", BRIDGE, "up")
            for namespace in (network.broker, *network.hosts):
                network.add(namespace)
        except BaseException:
            network.remove()
            raise
        return network

    def add(self, namespace: Namespace) -> None:
        ip("netns", "add", namespace.name)
        ip("link", "add", namespace.link, "type", "veth", "peer", "name", "eth0", "netns",
           namespace.name)  # fmt: skip
        ip("link", "set", namespace.link, "master", BRIDGE, "up")
        ip("-n", namespace.name, "addr", "add", f"{namespace.address}/24", "dev", "eth0")
        ip("-n", namespace.name, "link", "set", "eth0", "up")
        # The broker's controller listener and anything a daemon binds locally need lo.
        ip("-n", namespace.name, "link", "set", "lo", "up")

    def partition(self, index: int) -> None:
        """Cut host ``index`` off: the root end of its veth down. Its daemon runs on."""
        ip("link", "set", self.hosts[index].link, "down")
        self.cut.add(index)

    def heal(self, index: int) -> None:
        ip("link", "set", self.hosts[index].link, "up")
        self.cut.discard(index)

    def heal_all(self) -> None:
        for index in sorted(self.cut):
            self.heal(index)

    def remove(self) -> None:
        """Everything ``create`` made, and the lock; safe to call twice."""
        try:
            remove_all()
        finally:
            if self.lock is not None:
                self.lock.close()
                self.lock = None


class NamespaceBroker(AsyncBrokerControl):
    """The soak's own broker, run by ``tools.kafka_broker`` inside ``namespace`` with its files
    under ``run_dir``, listening (and advertised) on the namespace's address.

    Whatever starts the JVM runs inside the namespace (``up``, ``start``: the tool checks its
    ports and binds there); kill and stop only signal the recorded pid, which works from here.
    """

    def __init__(self, namespace: Namespace, port: int, run_dir: Path) -> None:
        bootstrap = f"{namespace.address}:{port}"
        super().__init__(BrokerControl(bootstrap, run_dir=run_dir))
        self.namespace = namespace
        self.environment = {
            **os.environ,
            "KAFKA_BOOTSTRAP": bootstrap,
            "KAFKA_RUN_DIR": str(run_dir),
            # Docker would publish the port on the root namespace, not on the bridge.
            "KAFKA_RUNNER": "native",
        }

    async def tool(self, command: str, timeout: float) -> None:
        """``python -m tools.kafka_broker COMMAND`` inside the namespace; fails with its output."""
        process = await asyncio.create_subprocess_exec(
            *self.namespace.command([sys.executable, "-m", "tools.kafka_broker", command]),
            cwd=ROOT,
            env=self.environment,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise NetnsUnavailable(
                f"kafka_broker {command} in {self.namespace.name}: no answer in {timeout:.0f} s"
            ) from None
        if process.returncode != 0:
            raise NetnsUnavailable(
                f"kafka_broker {command} in {self.namespace.name} failed:\n"
                f"{output.decode(errors='replace')[-3000:]}\n{self.log_tail()}"
            )

    async def up(self) -> None:
        # Fetching the jars may come first (once per machine): Maven's time on top.
        await self.tool("up", READY_TIMEOUT + 600)

    async def start(self, timeout: float = READY_TIMEOUT) -> None:
        await self.tool("start", timeout + 30)

    async def down(self) -> None:
        await asyncio.to_thread(self.sync.down)
