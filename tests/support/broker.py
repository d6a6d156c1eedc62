"""The harness's broker, for tests that stop, kill and restart it.

``tools.kafka_broker.BrokerControl`` blocks while it waits (a restart takes seconds);
this wrapper runs it in a worker thread, so that the clients a test keeps on the event
loop (a consumer's heartbeat, a daemon under test) keep running meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from tools.kafka_broker import READY_TIMEOUT, STOP_TIMEOUT, BrokerControl, probe


@dataclass(frozen=True)
class SecureListeners:
    """The harness broker's SASL_PLAINTEXT and SSL listeners, and how to log in to them.

    One user for PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512; a CA that signed the broker's
    certificate, and a client certificate (key encrypted with ``client_key_password``)
    for mutual TLS.
    """

    sasl_bootstrap: str
    ssl_bootstrap: str
    username: str
    password: str
    ca_file: Path
    client_cert: Path
    client_key: Path
    client_key_password: str


class AsyncBrokerControl:
    """Stop, kill and start the broker at ``bootstrap`` from async tests."""

    def __init__(self, control: BrokerControl) -> None:
        self.sync = control

    @property
    def bootstrap(self) -> str:
        return self.sync.bootstrap

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Graceful shutdown (SIGTERM); the data stays for ``start``."""
        await asyncio.to_thread(self.sync.stop, timeout)

    async def kill(self) -> None:
        """kill -9, as a crash; the data stays for ``start``."""
        await asyncio.to_thread(self.sync.kill)

    async def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start the broker on its data; return once it serves requests again."""
        await asyncio.to_thread(self.sync.start, timeout)

    def pause(self) -> None:
        """SIGSTOP the broker: its connections stay open and nothing is answered, as with a
        broker in a long pause or cut off. ``resume`` before the test ends."""
        os.kill(self._pid(), signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: a paused broker carries on."""
        os.kill(self._pid(), signal.SIGCONT)

    def _pid(self) -> int:
        state = self.sync.load_state()
        if state is None or state.pid is None or not self.sync.is_running():
            raise AssertionError("pausing needs the native broker this harness started, running")
        return state.pid

    async def is_ready(self) -> bool:
        """Whether the broker serves requests right now."""
        result = await asyncio.to_thread(probe, self.bootstrap)
        return result.state == "ready"

    async def is_running(self) -> bool:
        """Whether the broker's process (or container) runs, ready or not."""
        return await asyncio.to_thread(self.sync.is_running)

    def log_tail(self, lines: int = 60) -> str:
        return self.sync.log_tail(lines)
