"""Tests that share the broker run side by side; a test that stops or kills it runs alone.

``make test`` runs the tests in several pytest-xdist workers against one broker. Most of them
only need the broker to be up (each has its own topics and groups), but a test that stops, kills
or restarts it (``broker_control``) would break every other test that talks to it meanwhile.

Every test that uses the broker holds a shared lock on it while it runs, set-up and tear-down
included (the ``broker_control`` fixture starts the broker again in its tear-down); a test that
controls the broker holds it exclusively. The locks are ``flock`` locks on files named after the
broker's address, so they hold across the worker processes, and a worker that dies releases its
locks with it. A second lock, the turnstile, keeps the exclusive test from waiting forever: while
it waits for the running tests to finish, no new one starts. Consecutive exclusive tests in one
worker keep the lock from one to the next, so the others wait once for the whole row of them
(``make test`` puts them in one xdist group, which runs in one worker, in a row).

Tests that do not use the broker (most of ``tests/unit``) take no lock, and run while the broker
is down.
"""

from __future__ import annotations

import enum
import fcntl
import os
import re
from pathlib import Path
from typing import IO


class BrokerUse(enum.Enum):
    """How a test uses the broker."""

    NONE = "none"
    SHARED = "shared"  # produces, consumes, runs daemons: needs it up
    EXCLUSIVE = "exclusive"  # stops, kills or restarts it


class BrokerLock:
    """This process's hold on the broker at ``bootstrap``: none, shared or exclusive."""

    def __init__(self, directory: Path, bootstrap: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^a-zA-Z0-9.-]+", "-", bootstrap)
        # Opened once per process: flock locks belong to the open file, so each worker has
        # its own and they exclude each other.
        self._turnstile = _open(directory / f"broker-{name}.turnstile")
        self._users = _open(directory / f"broker-{name}.lock")
        self.held = BrokerUse.NONE

    def acquire(self, use: BrokerUse) -> None:
        """Wait until the test may use the broker as ``use`` says (nothing to do if held so)."""
        if use is self.held:
            return
        self.release()
        if use is BrokerUse.NONE:
            return
        # Through the turnstile: while an exclusive test holds it (waiting for the shared
        # tests to finish, or running), no new shared test starts.
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        if use is BrokerUse.SHARED:
            try:
                fcntl.flock(self._users, fcntl.LOCK_SH)
            finally:
                fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        else:
            fcntl.flock(self._users, fcntl.LOCK_EX)
        self.held = use

    def release(self) -> None:
        if self.held is BrokerUse.NONE:
            return
        fcntl.flock(self._users, fcntl.LOCK_UN)
        if self.held is BrokerUse.EXCLUSIVE:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        self.held = BrokerUse.NONE

    def close(self) -> None:
        """Release, and close the files (a process that exits releases its locks anyway)."""
        self.release()
        self._turnstile.close()
        self._users.close()


def _open(path: Path) -> IO[bytes]:
    return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b")
