"""The lock that lets tests share the broker, and gives it to one test that stops it.

Each ``BrokerLock`` opens its own lock files, and flock locks belong to the open file: two of them
in one process exclude each other as two workers would, so threads stand in for the workers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.broker_lock import BrokerLock, BrokerUse

BOOTSTRAP = "127.0.0.1:9092"
BLOCKED_S = 0.3  # long enough for a lock that is free to have been taken

LockFactory = Callable[..., BrokerLock]


@pytest.fixture
def new_lock(tmp_path: Path) -> Iterator[LockFactory]:
    """``new_lock(bootstrap=BOOTSTRAP)``: a worker's lock; all closed after the test."""
    made: list[BrokerLock] = []

    def make(bootstrap: str = BOOTSTRAP) -> BrokerLock:
        made.append(BrokerLock(tmp_path, bootstrap))
        return made[-1]

    yield make
    for lock in made:
        lock.close()


def acquire_in_thread(lock: BrokerLock, use: BrokerUse) -> threading.Event:
    """Start acquiring in a thread; the event is set once the lock is held."""
    done = threading.Event()

    def run() -> None:
        lock.acquire(use)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done


def test_tests_share_the_broker(new_lock: LockFactory) -> None:
    first, second = new_lock(), new_lock()
    first.acquire(BrokerUse.SHARED)
    assert acquire_in_thread(second, BrokerUse.SHARED).wait(5)
    assert (first.held, second.held) == (BrokerUse.SHARED, BrokerUse.SHARED)


def test_a_test_that_stops_the_broker_waits_for_the_others_and_then_has_it_alone(
    new_lock: LockFactory,
) -> None:
    running, stopper, later = new_lock(), new_lock(), new_lock()
    running.acquire(BrokerUse.SHARED)
    stopped = acquire_in_thread(stopper, BrokerUse.EXCLUSIVE)
    assert not stopped.wait(BLOCKED_S)
    # A test that starts while the stopper waits waits behind it (the turnstile), so that a
    # row of shared tests cannot keep the stopper waiting.
    started_later = acquire_in_thread(later, BrokerUse.SHARED)
    assert not started_later.wait(BLOCKED_S)

    running.release()
    assert stopped.wait(5)
    assert not started_later.wait(BLOCKED_S)
    stopper.release()
    assert started_later.wait(5)


def test_an_exclusive_hold_lasts_until_a_test_that_needs_less(new_lock: LockFactory) -> None:
    stopper, other = new_lock(), new_lock()
    stopper.acquire(BrokerUse.EXCLUSIVE)
    stopper.acquire(BrokerUse.EXCLUSIVE)  # the next test of a row: already held
    waiting = acquire_in_thread(other, BrokerUse.SHARED)
    assert not waiting.wait(BLOCKED_S)
    # Another broker's tests do not wait for this one's.
    assert acquire_in_thread(new_lock("127.0.0.1:19092"), BrokerUse.EXCLUSIVE).wait(5)

    stopper.acquire(BrokerUse.NONE)  # a test that does not use the broker lets it go
    assert waiting.wait(5)
    assert stopper.held is BrokerUse.NONE
