"""Every counter the daemon keeps, in one place: the hot path only increments them; the progress
log, the metrics endpoint and the tests read them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiokafka import TopicPartition


@dataclass
class Stats:
    records: int = 0  # records counted and committed
    batches: int = 0  # batch transactions committed
    rebalances: int = 0  # assignments received from the group
    fenced_batches: int = 0  # partition batches dropped: another owner claimed or moved it
    # partitions rebuilt from their log's first offset: out of range, or their topic recreated
    out_of_range_resets: int = 0
    busy_retries: int = 0  # transactions retried because another connection held the lock
    bad_records: int = 0  # records that did not decode, skipped or dead-lettered, committed
    kafka_offset_commits: int = 0  # positions copied to the group's offsets in Kafka
    kafka_offset_commit_failures: int = 0  # such copies that failed (the database is unaffected)
    # --changelog: records restored into this file at claims, and applied by the standby
    changelog_restored: int = 0
    changelog_applied: int = 0
    changelog_failures: int = 0  # batches rolled back because their changelog did not commit
    # Changelog records set aside by restores and the standby (not a valid row or position),
    # and what the last one was.
    changelog_quarantined: int = 0
    changelog_quarantine_last: str | None = None
    # --standby all: changelog records each followed partition is behind its owner, at the
    # standby's last poll (a partition not fetched yet is absent).
    standby_lag: dict[TopicPartition, int] = field(default_factory=dict)
    # --topic-pattern: matching topics found deleted while running, and those of them that
    # no topic of the same name has replaced since (their state stays in the file).
    topics_deleted: int = 0
    deleted_topics: set[str] = field(default_factory=set)
    # Why the schema registry is being waited for, while it does not answer (None: it does).
    schema_registry_unavailable: str | None = None
    # What processors counted in committed batches, by "processor:counter".
    processor_counters: Counter[str] = field(default_factory=Counter)
    # --on-processor-error dead-letter: records written to rejected_records because a processor
    # failed on them, in committed batches, by processor.
    rejected_records: Counter[str] = field(default_factory=Counter)
    # Latencies of the batch commits since the metrics last drained them, in seconds.
    commit_seconds: list[float] = field(default_factory=list)

    def count_processors(self, counters: Mapping[str, int]) -> None:
        if counters:
            self.processor_counters.update(counters)
