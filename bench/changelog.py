"""The ``--changelog`` measurements of ``python -m bench.run``: (h), the restore and the standbys.

- ``restored_exact``: after a (h) run, the check that the changelog holds the state: a second
  ``sqlstate run --changelog`` in the same group, on a new file, once the first stopped. Its
  claims restore every partition from the changelog alone (the input is at its end by then, so
  nothing is consumed); its counts must equal what was produced.
- ``measure_restore``: the restore time of one partition holding N distinct keys
  (``--restore-keys``): a topic of one partition with N records of N distinct keys, consumed
  by ``sqlstate run --changelog`` (so its changelog holds N rows), then a second daemon in the
  same group on an empty file, timed from its launch to its ``changelog_restored`` line.
- ``measure_standby_lag``: two ``sqlstate run --changelog`` processes in one group on two files
  (standbys on: each file follows the partitions the other process owns) consuming the bench's
  own copy of the workload at full speed: both claim their halves of an empty topic, are
  stopped while the workload is produced into it, and continue together. Every
  ``--lag-interval`` the bench reads each file's applied changelog offsets and the changelogs'
  ends, and reports how far the file that follows a partition is behind, in offsets (records
  and transaction markers) and in seconds: for each changelog offset the owning process's file
  reached, how long after that the following file reached it. At the end both files must hold
  every count exactly: each process owns half the partitions and follows the other half.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench import sqlstate_process, workload
from bench.report import RunResult, percentile
from sqlstate.changelog.offsets import changelog_offsets
from sqlstate.changelog.topics import changelog_topic
from sqlstate.state.reads import positions

#: What every changelog run adds to ``sqlstate run``.
CHANGELOG_ARGS = ("--changelog",)
RUN_TIMEOUT_S = 900.0
SETTLE_TIMEOUT_S = 60.0
LAG_INTERVAL_S = 0.1
SAMPLE_ROUND_TIMEOUT_S = 30.0
#: (i)'s session timeout: its members stay frozen while the workload is produced.
FROZEN_SESSION_MS = 120_000


def _counts_exact(database: Path, produced: workload.Produced) -> bool:
    return sqlstate_process.stored_counts(database, produced.topic) == produced.counts


async def _delete_topics(bootstrap: str, topics: Sequence[str]) -> None:
    for topic in topics:
        # A run that failed before creating its changelog leaves nothing to delete.
        with contextlib.suppress(Exception):
            await workload.delete_topic(bootstrap, topic)


def delete_changelog(bootstrap: str, group_id: str, topic: str) -> None:
    """Delete the changelog a run in ``group_id`` made for ``topic``."""
    asyncio.run(_delete_topics(bootstrap, [changelog_topic(group_id, topic)]))


@dataclass(frozen=True)
class Restored:
    """A file rebuilt from the changelog alone."""

    exact: bool
    records: int  # changelog records applied, every partition
    restore_s: float  # the partitions' restores, one after the other, as the daemon logged them
    launch_to_restored_s: float | None  # from launch to the last partition's restore
    launch_to_caught_up_s: float  # from launch to every position at the input's end


def restore(
    bootstrap: str,
    topic: str,
    group_id: str,
    database: Path,
    end_offsets: dict[int, int],
    extra_args: tuple[str, ...],
) -> Restored:
    """Start a daemon on the empty file ``database`` in ``group_id``, whose earlier member
    stopped, wait until its positions reach ``end_offsets`` (restored from the changelog, the
    input having nothing after them) and stop it. ``exact`` is left False: the caller checks."""
    daemon = sqlstate_process.launch(
        f"bench-restore-{uuid.uuid4().hex[:4]}", bootstrap, topic, group_id, database, extra_args
    )
    try:
        caught_up = sqlstate_process.wait_caught_up(
            database, topic, end_offsets, [daemon], RUN_TIMEOUT_S
        )
    finally:
        sqlstate_process.stop(daemon)
    restores = daemon.events("changelog_restored")
    last = max((_epoch(entry["time"]) for entry in restores), default=None)
    return Restored(
        exact=False,
        records=sum(entry["records"] for entry in restores),
        restore_s=round(sum(entry["restore_s"] for entry in restores), 3),
        launch_to_restored_s=None if last is None else round(last - daemon.launched_at, 3),
        launch_to_caught_up_s=round(caught_up - daemon.launched_at, 3),
    )


def restored_exact(
    bootstrap: str,
    produced: workload.Produced,
    group_id: str,
    database: Path,
    extra_args: tuple[str, ...],
) -> Restored:
    """The check of a changelog run: its state rebuilt from the changelog equals the counts."""
    restored = restore(
        bootstrap, produced.topic, group_id, database, produced.end_offsets, extra_args
    )
    return dataclasses.replace(restored, exact=_counts_exact(database, produced))


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


# ---- restore of one partition of N keys --------------------------------------------------------


async def _produce_distinct(bootstrap: str, topic: str, keys: int) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, max_batch_size=workload.PRODUCE_BATCH_BYTES
    )
    await producer.start()
    try:
        names = [workload.key_name(i) for i in range(keys)]
        await workload.produce_partition(producer, topic, 0, list(range(keys)), names)
    finally:
        await producer.stop()


def measure_restore(
    bootstrap: str, keys: int, workdir: Path, daemon_args: tuple[str, ...]
) -> dict[str, Any]:
    """Build a changelog partition holding ``keys`` rows, then time its restore into an empty
    file; the restored file must hold every key with its count of 1."""
    topic = f"sqlstate-bench-restore-{uuid.uuid4().hex[:8]}"
    group_id = f"{topic}-group"
    args = (*CHANGELOG_ARGS, *daemon_args)
    asyncio.run(workload.create_topic(bootstrap, topic, 1))
    try:
        began = time.perf_counter()
        asyncio.run(_produce_distinct(bootstrap, topic, keys))
        produced_s = time.perf_counter() - began
        built = workdir / f"restore-{keys}-source.db"
        source = sqlstate_process.launch(
            "bench-restore-source", bootstrap, topic, group_id, built, args
        )
        try:
            sqlstate_process.wait_caught_up(built, topic, {0: keys}, [source], RUN_TIMEOUT_S)
        finally:
            sqlstate_process.stop(source)
        consumed_s = _window(source)
        target = workdir / f"restore-{keys}-target.db"
        restored = restore(bootstrap, topic, group_id, target, {0: keys}, args)
        counts = sqlstate_process.stored_counts(target, topic)
        exact = len(counts) == keys and all(count == 1 for count in counts.values())
        return {
            "keys": keys,
            "produce_s": round(produced_s, 1),
            "build_msg_per_s": round(keys / consumed_s) if consumed_s else None,
            "records": restored.records,
            "restore_s": restored.restore_s,
            "launch_to_restored_s": restored.launch_to_restored_s,
            "exact": exact,
        }
    finally:
        asyncio.run(_delete_topics(bootstrap, [topic, changelog_topic(group_id, topic)]))
        for path in workdir.glob(f"restore-{keys}-*"):
            path.unlink()


def _window(daemon: sqlstate_process.DaemonProcess) -> float | None:
    """Seconds from its first committed batch to its last."""
    committed = daemon.committed()
    return committed[-1].at - committed[0].at if len(committed) > 1 else None


# ---- standby lag --------------------------------------------------------------------------------


@dataclass
class _Samples:
    """What the sampler saw: per file, per partition, (time, applied changelog offset) and
    (time, input position)."""

    files: list[dict[int, list[tuple[float, int]]]]
    ends: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    states: list[dict[int, list[tuple[float, int]]]] = field(default_factory=list)
    # When the last round that read every file's positions began (epoch s): the caller waits
    # for one that began after the files caught up, so the samples show where they ended.
    whole_round_began: float = 0.0
    # What stopped the sampler, if anything did.
    error: Exception | None = None

    def __post_init__(self) -> None:
        if not self.states:
            self.states = [{} for _ in self.files]


def _applied(database: Path, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """A file's applied changelog offsets and its input positions, by partition of ``topic``."""
    try:
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    except sqlite3.OperationalError:
        return {}, {}
    try:
        offsets = changelog_offsets(conn)
        held = positions(conn)
    except sqlite3.OperationalError:  # not migrated yet
        return {}, {}
    finally:
        conn.close()
    return (
        {tp.partition: offset for tp, offset in offsets.items() if tp.topic == topic},
        {row.partition: row.next_offset for row in held if row.topic == topic},
    )


def _sample(
    bootstrap: str,
    changelog: str,
    topic: str,
    partitions: int,
    databases: Sequence[Path],
    interval_s: float,
    stop: threading.Event,
    samples: _Samples,
) -> None:
    async def loop() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
        await consumer.start()
        tps = [TopicPartition(changelog, p) for p in range(partitions)]
        try:
            while not stop.is_set():
                began = time.time()
                whole = True
                for index, database in enumerate(databases):
                    now = time.time()
                    applied, state = _applied(database, topic)
                    whole = whole and bool(state)  # a file busy or not migrated yet: not read
                    for partition, offset in applied.items():
                        samples.files[index].setdefault(partition, []).append((now, offset))
                    for partition, offset in state.items():
                        samples.states[index].setdefault(partition, []).append((now, offset))
                # The last stable offset: what a read_committed reader can reach.
                with contextlib.suppress(Exception):  # not created yet
                    ends = await consumer.end_offsets(tps)
                    now = time.time()
                    for tp, end in ends.items():
                        samples.ends.setdefault(tp.partition, []).append((now, end))
                if whole:
                    samples.whole_round_began = began
                await asyncio.sleep(max(0.0, interval_s - (time.time() - began)))
        finally:
            await consumer.stop()

    try:
        asyncio.run(loop())
    except Exception as error:
        samples.error = error
        raise


def _first_reached(series: Sequence[tuple[float, int]], offset: int) -> float | None:
    return next((at for at, value in series if value >= offset), None)


def lag_figures(
    samples: _Samples, owners: dict[int, int], since: float, until: float
) -> dict[str, Any]:
    """Offsets behind (the changelog's end minus the following file's changelog offset, at
    each sample from ``since`` to ``until``: while the topic is consumed; commit markers
    included) and seconds behind (for each
    input position the owner's file reached, the time until the following file reached it:
    until it showed that state. Not its changelog offset: that one may stop short of a commit
    marker, which carries no state, until its next fetch)."""
    behind: list[int] = []
    delays: list[float] = []
    for partition, owner in owners.items():
        for follower in range(len(samples.files)):
            if follower == owner:
                continue
            following = samples.files[follower].get(partition, [])
            for at, end in samples.ends.get(partition, []):
                if not since <= at <= until:
                    continue
                applied = [value for when, value in following if when <= at]
                behind.append(max(0, end - (applied[-1] if applied else 0)))
            owned = samples.states[owner].get(partition, [])
            followed = [
                (at, offset)
                for at, offset in samples.states[follower].get(partition, [])
                if at >= since
            ]
            seen = 0
            for at, offset in owned:
                # Before ``since`` the files hold their claims, not a batch's state.
                if at < since or offset <= seen:
                    continue
                seen = offset
                reached = _first_reached(followed, offset)
                if reached is not None:
                    delays.append(max(0.0, reached - at))
    return {
        "offsets_behind_p50": percentile(behind, 0.5),
        "offsets_behind_max": max(behind, default=None),
        "seconds_behind_p50": _round(percentile(delays, 0.5)),
        "seconds_behind_p99": _round(percentile(delays, 0.99)),
        "seconds_behind_max": _round(max(delays, default=None)),
        "seconds_behind_mean": _round(statistics.fmean(delays) if delays else None),
        "samples": len(behind),
        "steps": len(delays),
    }


def _thousands(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def measure_standby_lag(
    bootstrap: str,
    spec: workload.Workload,
    group_id: str,
    folder: Path,
    daemon_args: tuple[str, ...],
    interval_s: float = LAG_INTERVAL_S,
) -> tuple[RunResult, dict[str, Any]]:
    """Two processes, two files, one group, standbys on; the run and the lag figures.

    The two join on an empty topic of their own and claim their halves at offset 0; both are
    then frozen (SIGSTOP) while ``spec`` is produced into it, and let go together (SIGCONT):
    each starts on the whole backlog of its own partitions at the same instant. (The hold of
    (c), positions at the log's end in the file, does not hold here: under --changelog a claim
    takes a partition's position from its changelog, which has none yet.)
    """
    topic = f"sqlstate-bench-standby-{uuid.uuid4().hex[:8]}"
    asyncio.run(workload.create_topic(bootstrap, topic, spec.partitions))
    try:
        return _two_hosts(bootstrap, spec, topic, group_id, folder, daemon_args, interval_s)
    finally:
        asyncio.run(_delete_topics(bootstrap, [topic, changelog_topic(group_id, topic)]))


def _two_hosts(
    bootstrap: str,
    spec: workload.Workload,
    topic: str,
    group_id: str,
    folder: Path,
    daemon_args: tuple[str, ...],
    interval_s: float,
) -> tuple[RunResult, dict[str, Any]]:
    databases = [folder / f"standby-{i}.db" for i in range(2)]
    # A frozen member sends no heartbeats: its session must outlast the produce. (It also
    # lengthens what the group waits for a member in a rebalance, and the claim's budget for a
    # locked file: neither comes up in the window, which has no rebalance.)
    session = ("--session-timeout-ms", str(FROZEN_SESSION_MS))
    args = (*CHANGELOG_ARGS, *session, *daemon_args)
    daemons = [
        sqlstate_process.launch(f"bench-standby-{i}", bootstrap, topic, group_id, database, args)
        for i, database in enumerate(databases)
    ]
    stop = threading.Event()
    samples = _Samples([{}, {}])
    sampler: threading.Thread | None = None
    caught_up = 0.0
    try:
        sqlstate_process.wait_for_assignment(daemons, spec.partitions, SETTLE_TIMEOUT_S)
        sqlstate_process.wait_for_claims(daemons, databases, topic, SETTLE_TIMEOUT_S)
        with sqlstate_process.frozen(daemons):
            produced = asyncio.run(workload.produce(bootstrap, topic, spec))
            if produced.seconds * 1000 >= FROZEN_SESSION_MS:
                raise RuntimeError(
                    f"(i)'s workload took {produced.seconds:.1f} s to produce, past the frozen"
                    f" processes' session timeout ({FROZEN_SESSION_MS / 1000:g} s): they would"
                    " not start together"
                )
            sampler = threading.Thread(
                target=_sample,
                args=(
                    bootstrap,
                    changelog_topic(group_id, topic),
                    topic,
                    spec.partitions,
                    databases,
                    interval_s,
                    stop,
                    samples,
                ),
                daemon=True,
            )
            sampler.start()
        launched_at = time.time()
        # Each file reaches the end of every partition: its own by consuming, the other
        # process's through its standby (the position records).
        for database in databases:
            caught_up = sqlstate_process.wait_caught_up(
                database, topic, produced.end_offsets, daemons, RUN_TIMEOUT_S
            )
        # A short run can be consumed and followed between two samples: without a round after
        # it, no sample would show the following file reach the owner's state.
        wait_for_round_after(samples, caught_up, sampler.is_alive)
        owners = _owners(daemons)
    finally:
        stop.set()
        if sampler is not None:
            sampler.join(30)
        sqlstate_process.stop_all(daemons)
    exact = all(_counts_exact(database, produced) for database in databases)
    committed = [c.at for d in daemons for c in d.committed()]
    figures = lag_figures(samples, owners, min(committed), max(committed))
    figures["interval_s"] = interval_s
    figures["caught_up_after_consumed_s"] = round(caught_up - max(committed), 3)
    run = sqlstate_process.run_result(
        "changelog_two_hosts", "(i) 2 processes, 2 files, --changelog", launched_at, daemons, exact
    )
    return run, figures


def wait_for_round_after(
    samples: _Samples,
    at: float,
    sampler_alive: Callable[[], bool],
    timeout_s: float = SAMPLE_ROUND_TIMEOUT_S,
) -> None:
    """Return once the sampler has read every file in a round that began at ``at`` or later."""
    give_up = time.monotonic() + timeout_s
    while samples.whole_round_began < at:
        if not sampler_alive():
            raise RuntimeError(
                "the standby lag sampler stopped before it read the files caught up"
            ) from samples.error
        if time.monotonic() > give_up:
            raise TimeoutError(
                f"the standby lag sampler read no file caught up within {timeout_s:g} s"
            )
        time.sleep(0.01)


def _owners(daemons: Sequence[sqlstate_process.DaemonProcess]) -> dict[int, int]:
    """Input partition -> the index of the process whose latest assignment holds it."""
    return {
        partition: index
        for index, daemon in enumerate(daemons)
        for partition in daemon.assignment() or ()
    }


def describe(results: dict[str, Any]) -> list[str]:
    """The lines printed under the table: what the changelog runs measured besides it."""
    lines = []
    summaries = results["summaries"]
    for name in ("changelog", "changelog_no_standby", "changelog_two_hosts"):
        summary = summaries.get(name)
        if summary is not None and summary["publish_ms_p50"] is not None:
            lines.append(
                f"{summary['label']}: of each commit, waiting for the Kafka transactions"
                f" p50 {summary['publish_ms_p50']} ms, p99 {summary['publish_ms_p99']} ms"
                f" (commit p50 {summary['commit_ms_p50']} ms)"
            )
    for name in ("changelog", "changelog_no_standby"):
        for number, restored in enumerate(results.get(f"{name}_restored", []), start=1):
            lines.append(
                f"{summaries[name]['label']}, round {number}: a new file rebuilt from the"
                f" changelog alone (by its standby, or its claims' restores:"
                f" {restored['records']:,} records in {restored['restore_s']} s) had every"
                f" position at the end {restored['launch_to_caught_up_s']} s after its launch,"
                f" counts {'exact' if restored['exact'] else 'NOT EXACT'}"
            )
    for number, lag in enumerate(results.get("standby_lag", []), start=1):
        lines.append(
            f"standby lag under full load, round {number} (sampled every {lag['interval_s']} s):"
            f" offsets behind p50 {lag['offsets_behind_p50']}, max {lag['offsets_behind_max']};"
            f" seconds behind p50 {lag['seconds_behind_p50']}, p99 {lag['seconds_behind_p99']},"
            f" max {lag['seconds_behind_max']}; files caught up"
            f" {lag['caught_up_after_consumed_s']} s after the last batch"
        )
    for restore in results.get("restore", []):
        lines.append(
            f"restore of one changelog partition holding {restore['keys']:,} keys into an empty"
            f" file: {restore['records']:,} records in {restore['restore_s']} s (launch to"
            f" restored: {restore['launch_to_restored_s']} s; the source consumed at"
            f" {_thousands(restore['build_msg_per_s'])} msg/s),"
            f" {'exact' if restore['exact'] else 'NOT EXACT'}"
        )
    return lines
