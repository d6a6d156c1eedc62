"""The changelog topics: their names, and making sure each exists, compacted, wide enough.

Input topic ``T`` of group ``G`` has the changelog ``G.T.changelog``; its partition p carries the
state of input partition p only, so it has at least as many partitions as the input. It is
compacted (``cleanup.policy=compact``): Kafka keeps the last record of every key, which is all a
restore needs, however long the input's history. A topic of that name with ``delete`` in its
policy is refused: retention would delete the last value of keys that have not changed for a
while, and a restore from it would silently miss rows.

The name is the group and the topic joined with dots, as the design fixes it; a group and a topic
whose dotted forms coincide (group ``a.b`` with topic ``c``, group ``a`` with topic ``b.c``)
share a changelog, so each deployment needs a group of its own, as it always did.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from sqlstate.errors import ChangelogError, ChangelogTopicError
from sqlstate.kafka.client import build_admin_client
from sqlstate.observe.logs import LogEvent
from sqlstate.settings import Settings

logger = logging.getLogger(__name__)
_CREATED = LogEvent(
    logger,
    logging.INFO,
    "changelog_created",
    "created the changelog topic %(topic)s: %(partitions)d partitions, compacted",
)
_GROWN = LogEvent(
    logger,
    logging.INFO,
    "changelog_grown",
    "grew the changelog topic %(topic)s from %(_before)d to %(partitions)d partitions",
)

SUFFIX = ".changelog"
# Kafka's own rule for topic names (org.apache.kafka.common.internals.Topic).
_LEGAL_NAME = re.compile(r"^[a-zA-Z0-9._-]+$")
_MAX_NAME_LENGTH = 249
_COMPACT = "compact"
# How a changelog is created. Kafka never compacts a partition's active segment, so with the
# broker's defaults (1 GiB or 7 days per segment) a restore would read up to a week of history
# rather than the live state: an hour per segment bounds that to the last hour's changes on top
# of the state. Tombstones are kept a week (the default is a day): a file that catches up from an
# older offset cannot apply the deletions whose tombstones are gone, and restores whole instead
# (``horizon.py``).
_DELETE_RETENTION = "delete.retention.ms"
_CONFIGS = {
    "cleanup.policy": _COMPACT,
    "segment.ms": str(3_600_000),
    _DELETE_RETENTION: str(7 * 86_400_000),
}
# A topic's delete.retention.ms when neither it nor the broker sets one (Kafka's default, a day).
_KAFKA_DELETE_RETENTION_MS = 86_400_000
# How long a topic just created or grown may take to show a leader for every partition.
_LEADERS_TIMEOUT_S = 30.0


def changelog_topic(group_id: str, topic: str) -> str:
    """The changelog topic of input ``topic`` in group ``group_id``: ``<group>.<topic>.changelog``.

    Raises ChangelogTopicError when Kafka would refuse that name (characters other than
    ``[a-zA-Z0-9._-]``, or longer than 249), naming what to change.
    """
    name = f"{group_id}.{topic}{SUFFIX}"
    if not _LEGAL_NAME.match(name):
        raise ChangelogTopicError(
            f"the changelog topic of group {group_id!r} and topic {topic!r} would be {name!r},"
            " which Kafka refuses: a topic name has only ASCII letters, digits, '.', '_' and"
            " '-'; use a --group-id made of those"
        )
    if len(name) > _MAX_NAME_LENGTH:
        raise ChangelogTopicError(
            f"the changelog topic of group {group_id!r} and topic {topic!r} would be"
            f" {len(name)} characters long, and Kafka allows {_MAX_NAME_LENGTH}: use a shorter"
            " --group-id"
        )
    return name


def transactional_id(group_id: str, topic: str, partition: int) -> str:
    """The transactional id of the producer that owns input partition ``topic``-``partition``.

    One per input partition and the same on every host: starting a producer with it fences
    every earlier owner of that partition, wherever it runs.
    """
    return f"sqlstate.{group_id}.{topic}.{partition}"


async def ensure_changelogs(
    settings: Settings, partitions: Mapping[str, int], replication_factor: int = -1
) -> dict[str, str]:
    """Make sure each input topic's changelog exists, compacted, with as many partitions as
    the input (``partitions``: input topic -> its partition count); return input topic ->
    changelog topic.

    A missing changelog is created with ``cleanup.policy=compact`` and ``replication_factor``
    (-1: the broker's ``default.replication.factor``); one with fewer partitions than its input
    is grown (never shrunk: Kafka cannot, and the extra partitions carry nothing). Several
    processes may run this at once: a topic another one created meanwhile is checked like any
    existing one. Raises ChangelogTopicError for a name Kafka refuses or a topic of that name
    whose policy deletes records, ChangelogError when Kafka refuses a creation or cannot be
    asked.
    """
    names = {topic: changelog_topic(settings.group_id, topic) for topic in partitions}
    if not names:
        return names
    admin = build_admin_client(settings)
    try:
        await admin.start()
        existing = await _partition_counts(admin, list(names.values()))
        missing = [topic for topic, name in names.items() if name not in existing]
        if missing:
            existing.update(
                await _create(admin, {names[t]: partitions[t] for t in missing}, replication_factor)
            )
        await _check_compacted(admin, list(names.values()))
        grow = {
            names[topic]: partitions[topic]
            for topic in names
            if existing[names[topic]] < partitions[topic]
        }
        if grow:
            await _grow(admin, grow, existing)
    except KafkaError as error:
        raise ChangelogError(f"the changelog topics could not be made ready: {error}") from error
    finally:
        await admin.close()
    return names


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """The partition count of each of ``names`` that exists."""
    counts: dict[str, int] = {}
    for described in await admin.describe_topics(names):
        if described["error_code"] == 0:
            counts[described["topic"]] = len(described["partitions"])
    return counts


async def _create(
    admin: AIOKafkaAdminClient, wanted: Mapping[str, int], replication_factor: int
) -> dict[str, int]:
    """Create the topics ``wanted`` (name -> partitions), compacted; return name -> partitions
    of each, including one another process created first (counted as it is)."""
    new_topics = []
    for name, count in wanted.items():
        # aiokafka's NewTopic refuses -1 without a replica assignment, a check older than
        # KIP-464: brokers since Kafka 2.4 read -1 in CreateTopics as their
        # default.replication.factor, also in the v3 request aiokafka sends (tested against
        # the test broker), so the attribute is set after the check.
        new_topic = NewTopic(name, count, 1, topic_configs=dict(_CONFIGS))
        new_topic.replication_factor = replication_factor
        new_topics.append(new_topic)
    response = await admin.create_topics(new_topics)
    created: dict[str, int] = {}
    raced: list[str] = []
    for name, error_code, *rest in response.topic_errors:
        error_type = for_code(error_code) if error_code else None
        if error_type is TopicAlreadyExistsError:
            raced.append(name)
        elif error_type is not None:
            message = rest[0] if rest and rest[0] else error_type.__name__
            raise ChangelogError(f"Kafka refused to create the changelog topic {name}: {message}")
        else:
            created[name] = wanted[name]
            _CREATED.log(topic=name, partitions=wanted[name], replication_factor=replication_factor)
    # Another process's topic may not show in the metadata yet: wait for it as for ours.
    return await _wait_until_led(admin, {**created, **dict.fromkeys(raced, 1)})


async def _check_compacted(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    """Raise ChangelogTopicError unless every one of ``names`` is compacted and never deleted
    by retention."""
    for name, policy in (await _described(admin, names, "cleanup.policy")).items():
        policies = {part.strip() for part in (policy or "").split(",")}
        if policies != {_COMPACT}:
            raise ChangelogTopicError(
                f"the changelog topic {name} has cleanup.policy={policy}: it must be"
                " 'compact' alone, since retention would delete the last value of rows"
                f" that did not change for a while. Set it with kafka-configs.sh --alter"
                f" --entity-type topics --entity-name {name} --add-config"
                " cleanup.policy=compact, or delete the topic"
            )


async def delete_retention_ms(settings: Settings, names: list[str]) -> dict[str, int]:
    """How long Kafka keeps a tombstone in each of the changelog topics ``names``
    (``delete.retention.ms``; Kafka's default where the topic does not say). ``KafkaError``
    when Kafka cannot be asked."""
    admin = build_admin_client(settings)
    try:
        await admin.start()
        values = await _described(admin, names, _DELETE_RETENTION)
    finally:
        await admin.close()
    return {
        name: int(value) if value is not None and value.isdigit() else _KAFKA_DELETE_RETENTION_MS
        for name, value in values.items()
    }


async def _described(
    admin: AIOKafkaAdminClient, names: list[str], config: str
) -> dict[str, str | None]:
    """The value of ``config`` of each topic of ``names`` (None: not given)."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, name, {config: None}) for name in names]
    values: dict[str, str | None] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.to_object()["resources"]:
            name = resource["resource_name"]
            if resource["error_code"]:
                error_type = for_code(resource["error_code"])
                raise error_type(f"reading the configuration of {name}")
            values[name] = _config_value(resource, config)
    return values


def _config_value(resource: Mapping[str, Any], name: str) -> str | None:
    for entry in resource["config_entries"]:
        if entry["config_names"] == name:
            value: str | None = entry["config_value"]
            return value
    return None


async def _grow(
    admin: AIOKafkaAdminClient, wanted: Mapping[str, int], existing: Mapping[str, int]
) -> None:
    """Grow each of ``wanted`` (name -> partitions) to that many partitions."""
    for name, count in wanted.items():
        try:
            await admin.create_partitions({name: NewPartitions(count)})
        except KafkaError:
            # Another process may have grown it first (Kafka answers INVALID_PARTITIONS when
            # the topic has that many already): only the count it has now matters.
            now = (await _partition_counts(admin, [name])).get(name, 0)
            if now < count:
                raise
            continue
        _GROWN.log(topic=name, _before=existing[name], partitions=count)
    await _wait_until_led(admin, wanted)


async def _wait_until_led(admin: AIOKafkaAdminClient, wanted: Mapping[str, int]) -> dict[str, int]:
    """Wait until each of ``wanted`` (name -> partitions) shows at least that many partitions,
    each with a leader, so that the first transaction does not race the metadata of a new
    partition; return name -> partitions."""
    if not wanted:
        return {}
    try:
        async with asyncio.timeout(_LEADERS_TIMEOUT_S):
            while True:
                counts: dict[str, int] = {}
                for topic in await admin.describe_topics(list(wanted)):
                    partitions = topic["partitions"]
                    if topic["error_code"] == 0 and all(
                        p["error_code"] == 0 and p["leader"] >= 0 for p in partitions
                    ):
                        counts[topic["topic"]] = len(partitions)
                if all(counts.get(name, 0) >= count for name, count in wanted.items()):
                    return counts
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise ChangelogError(
            f"the changelog topics {', '.join(sorted(wanted))} have no leader for every"
            f" partition after {_LEADERS_TIMEOUT_S:.0f} s"
        ) from None
