"""A fatal error exits promptly with its own code, even while the database is locked.

A failure in a rebalance callback stops the daemon (exit code 6). When it comes while a batch in
flight waits for a database that another process holds locked, that batch must give up at its
next busy timeout, as it does after a signal, rather than wait for the lock forever; and the
operator's SIGTERM after it is a first signal (the daemon goes on leaving the group and exits 6),
not a second one (exit 130 at once, no LeaveGroup).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

from tests.support.daemon import Daemon
from tests.support.faults import caught_up, daemon, produce, wait_for_log
from tests.support.kafka import TopicFactory
from tests.support.oracle import assert_exactly_once

BUSY_TIMEOUT_S = 1.0
SHUTDOWN_TIMEOUT_S = 3.0
# Starting and stopping the interpreter and the test's polling, beyond the two timeouts.
SLACK_S = 3.0


CLAIMED = re.compile(r"sqlstate\.rebalance: (assigned|claimed) partitions.*\(epoch")


async def wait_for_claims(member: Daemon, count: int, timeout: float = 60.0) -> None:
    """Wait until ``member`` has claimed partitions ``count`` times."""
    deadline = time.monotonic() + timeout
    while len(CLAIMED.findall(member.log())) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"not claimed {count} times:\n{member.log()[-4000:]}")
        await asyncio.sleep(0.1)


async def test_a_fatal_error_while_the_database_is_locked_exits_6_promptly(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    daemons: list[Daemon],
) -> None:
    topic = await topic_factory(partitions=4)
    database = tmp_path / "state.db"
    await produce(kafka_bootstrap, topic, 800, partitions=4, seed=1)
    timeouts = (
        "--busy-timeout",
        f"{BUSY_TIMEOUT_S:g}",
        "--shutdown-timeout",
        f"{SHUTDOWN_TIMEOUT_S:g}",
    )
    # Its third assignment fails: the first is its own, the second comes when the other member
    # joins, the third when that member dies.
    first = daemon(
        kafka_bootstrap,
        topic,
        group_id,
        database,
        *timeouts,
        name="first",
        fault="in_assign",
        at=3,
        action="raise",
    ).start()
    daemons.append(first)
    await wait_for_log(first, "assigned partitions:")
    second = daemon(kafka_bootstrap, topic, group_id, database, *timeouts, name="second").start()
    daemons.append(second)
    await wait_for_log(second, "assigned partitions:")
    # The first member's second assignment is claimed (at once, or, when the second member's
    # start held the database locked past the callback's budget, a moment later by its loop).
    await wait_for_claims(first, 2)
    await caught_up(kafka_bootstrap, database, topic, [first, second])

    locker = sqlite3.connect(database, isolation_level=None, timeout=10)
    try:
        locker.execute("BEGIN IMMEDIATE")
        # A batch the first member cannot commit, then a rebalance whose assignment fails.
        await produce(kafka_bootstrap, topic, 400, partitions=4, seed=2)
        # The batch's own retry line, not a deferred claim's.
        await wait_for_log(first, "is locked by another connection (attempt")
        await second.kill()
        await wait_for_log(first, "FAULT in_assign 3", timeout=60)
        await wait_for_log(first, "stopping: ", timeout=10)
        failed_at = time.monotonic()
        # The operator stops it meanwhile: a first signal, not a second.
        os.kill(first.pid, signal.SIGTERM)
        code = await first.wait(BUSY_TIMEOUT_S + SHUTDOWN_TIMEOUT_S + SLACK_S + 5)
        took = time.monotonic() - failed_at
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    log = first.log()
    assert took < BUSY_TIMEOUT_S + SHUTDOWN_TIMEOUT_S + SLACK_S, log[-4000:]
    assert "second SIGTERM" not in log
    assert re.search(r"sqlstate: error: claiming partitions .* failed", log), log[-4000:]
    if code != -signal.SIGTERM:
        assert code == 6, log[-4000:]
        assert "SIGTERM: finishing the batch in flight" in log
    # Else the daemon had finished its stop, error printed, before the SIGTERM came (the batch
    # gave up at once): the signal only cut the interpreter's last moments short.
    await assert_exactly_once(kafka_bootstrap, database, topic)
