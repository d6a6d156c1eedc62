"""Notices, while the daemon runs, a topic deleted and created again under the same name.

The fetcher reads a topic by name: once the old topic is gone and a new one has its name, it
reads the new log from the old positions, and nothing fails unless a position falls outside the
new log. The topic's ID tells: it is new. So at each refresh of the consumer's metadata (every
``--metadata-max-age``, and at once after a fetch failed on an unknown topic or a leader that
moved), one Metadata request asks for the claimed topics' IDs; a topic whose ID differs from the
one it was claimed under goes into ``recreated``, and the batch loop claims its partitions again
between two batches (``Claimer.reclaim``), where the ``--out-of-range`` policy decides. That costs
one small request per refresh and nothing per batch.

Until that refresh, records of the new topic read from the old positions may be committed; the
reset discards them with the rest of the old topic's state.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from sqlstate.app.ownership import Ownership
from sqlstate.kafka.client import after_each_refresh, topic_ids
from sqlstate.observe.logs import LogEvent

logger = logging.getLogger("sqlstate.topic_watch")  # its documented name
_IDS_UNAVAILABLE = LogEvent(
    logger,
    logging.DEBUG,
    "topic_ids_unavailable",
    "could not ask Kafka for the topics' IDs: %(reason)s",
)
_RECREATED = LogEvent(
    logger,
    logging.INFO,
    "topic_recreated",
    "topic %(topic)s has a new ID %(topic_id)s (claimed under %(old_topic_id)s); claiming its"
    " partitions again",
)


class TopicWatch:
    """Compares the claimed topics' IDs with Kafka's at each metadata refresh."""

    def __init__(self, consumer: AIOKafkaConsumer, ownership: Ownership) -> None:
        self._consumer = consumer
        self._ownership = ownership
        # topic -> the new ID Kafka gave, for topics claimed under another one
        self._recreated: dict[str, str] = {}

    @property
    def recreated(self) -> bool:
        """Whether a claimed topic was found with a new ID (read by the batch loop)."""
        return bool(self._recreated)

    def take(self) -> set[str]:
        """The topics found recreated that are still claimed under their old ID, forgotten
        here: the caller claims them again."""
        found, self._recreated = self._recreated, {}
        return set(self._ownership.recreated(found))

    async def changed(self, topics: Iterable[str]) -> dict[str, str]:
        """Of ``topics``, those claimed under an ID Kafka no longer gives them, with the new
        one. A topic that does not exist right now is not among them: the rebalance that
        follows its deletion takes it away."""
        claimed = {topic for topic in topics if self._ownership.topic_ids.get(topic) is not None}
        if not claimed:
            return {}
        return self._ownership.recreated(await topic_ids(self._consumer, claimed))

    def running(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Watch while the batch loop runs."""
        return after_each_refresh(self._consumer, self._check, "sqlstate-topic-watch")

    async def _check(self) -> None:
        try:
            found = await self.changed(list(self._ownership.topic_ids))
        except KafkaError as error:
            # The next refresh asks again; a broker that stays away stops the batch loop.
            _IDS_UNAVAILABLE.log(reason=repr(error))
            return
        for topic, new_id in sorted(found.items()):
            _RECREATED.log(
                topic=topic, topic_id=new_id, old_topic_id=self._ownership.topic_ids.get(topic)
            )
        self._recreated.update(found)
