"""Changelog topic names and transactional ids: derived from the group and the topic, and
refused when Kafka would refuse them."""

from __future__ import annotations

import pytest

from sqlstate.changelog.records import POSITION_KEY, position_record
from sqlstate.changelog.topics import changelog_topic, transactional_id
from sqlstate.errors import ChangelogTopicError, ConfigError


def test_the_name_joins_group_and_topic() -> None:
    assert changelog_topic("orders-app", "orders") == "orders-app.orders.changelog"
    assert transactional_id("orders-app", "orders", 7) == "sqlstate.orders-app.orders.7"


@pytest.mark.parametrize("group_id", ["with space", "colon:group", "ünïcode", "slash/group"])
def test_a_group_that_cannot_form_a_topic_name_is_refused(group_id: str) -> None:
    with pytest.raises(ChangelogTopicError, match="only ASCII letters") as raised:
        changelog_topic(group_id, "orders")
    assert isinstance(raised.value, ConfigError), "a settings problem: exit code 2"


def test_a_name_longer_than_kafka_allows_is_refused() -> None:
    topic = "t" * 200
    assert len(changelog_topic("g" * 38, topic)) == 249
    with pytest.raises(ChangelogTopicError, match="250 characters long"):
        changelog_topic("g" * 39, topic)


def test_the_position_record_is_canonical_json() -> None:
    assert POSITION_KEY == b'["$position"]'
    assert position_record(1234) == (POSITION_KEY, b'{"next_offset":1234}')
