"""``--topic-pattern`` while running: topics that come to match, and matching topics deleted.

aiokafka matches the pattern against the cluster's topics at each refresh of its metadata (every
``--metadata-max-age``) and changes the subscription, which rebalances the group. A topic created
since is then assigned and claimed like any other: its processors and its ID recorded by its
first claim, its partitions read from their earliest offset, each with its own position. A
topic deleted is revoked with the rebalance. This module only reports: after each refresh it
compares the topics the subscription holds with those it held before.

A topic that left the subscription is asked for by name (Metadata). One Kafka no longer knows was
deleted: a warning, ``Stats.topics_deleted``, and ``/healthz``'s ``degraded`` until a topic of
that name matches again. Its rows and positions stay in the file as they were: nothing is
forgotten, nothing guessed. One that still exists (a refresh caught it without a leader) is not
reported, and one that cannot be asked about now is asked again at the next refresh.

A topic deleted and created again comes back as a new topic ID: its first claim applies
``--out-of-range`` to it, as for a topic given with ``--topic`` (``topic_watch.py``).
"""

from __future__ import annotations

import contextlib
import logging

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from sqlstate.kafka.client import after_each_refresh, topic_ids
from sqlstate.observe.logs import LogEvent
from sqlstate.observe.stats import Stats

logger = logging.getLogger("sqlstate.topic_pattern")  # its documented name
_MATCHED = LogEvent(
    logger,
    logging.INFO,
    "topic_matched",
    "topic %(topic)s matches --topic-pattern; it is claimed at the rebalance that follows",
)
_DELETED = LogEvent(
    logger,
    logging.WARNING,
    "topic_deleted",
    "topic %(topic)s, matched by --topic-pattern, was deleted; its state and positions stay in"
    " the file as they were, and the other topics are consumed on",
)
_UNAVAILABLE = LogEvent(
    logger,
    logging.DEBUG,
    "topic_lookup_unavailable",
    "could not ask Kafka whether %(topics)s still exist: %(reason)s",
)


class MatchedTopics:
    """Follows the topics a pattern subscription holds, reporting those deleted."""

    def __init__(self, consumer: AIOKafkaConsumer, stats: Stats) -> None:
        self._consumer = consumer
        self._stats = stats
        # The topics the subscription held at the last refresh, and those that left it since
        # and are not known to be deleted yet.
        self._matched: set[str] = set()

    def running(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Follow while the batch loop runs."""
        return after_each_refresh(self._consumer, self.compare, "sqlstate-topic-pattern")

    async def compare(self) -> None:
        """Report what changed in the subscription since the last call."""
        current = set(self._consumer.subscription())
        for topic in sorted(current - self._matched):
            self._stats.deleted_topics.discard(topic)
            _MATCHED.log(topic=topic)
        left = self._matched - current
        self._matched = current | left
        if not left:
            return
        try:
            existing = await topic_ids(self._consumer, left)
        except KafkaError as error:
            _UNAVAILABLE.log(topics=sorted(left), reason=repr(error))
            return
        for topic in sorted(left - set(existing)):
            self._matched.discard(topic)
            self._stats.topics_deleted += 1
            self._stats.deleted_topics.add(topic)
            _DELETED.log(topic=topic)
