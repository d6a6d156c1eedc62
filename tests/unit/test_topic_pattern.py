"""``--topic-pattern``: which names it takes, and how it is given (no broker needed)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from click.testing import CliRunner

from sqlstate.changelog.identity import check_identity
from sqlstate.changelog.topics import SUFFIX, changelog_topic
from sqlstate.cli.commands import main
from sqlstate.errors import ConfigError, ProcessorError
from sqlstate.kafka.topic_pattern import CHANGELOG_SUFFIX, matches, subscription_pattern
from sqlstate.settings import Settings
from sqlstate.state.database import utc_now
from tests.support.db import query
from tests.unit.test_store import bounds, open_store


def takes(pattern: str, topic: str, group_id: str = "g") -> bool:
    return matches(subscription_pattern(pattern, group_id), topic)


@pytest.mark.parametrize(
    ("pattern", "topic", "taken"),
    [
        ("orders-.*", "orders-eu", True),
        ("orders-.*", "old-orders-eu", False),  # the whole name, not a search
        ("orders-[a-z]+", "orders-eu-2", False),  # up to its end
        ("a|b", "a", True),
        ("a|b", "ab", False),  # an alternation is anchored as a whole
        ("(?i)orders", "ORDERS", True),  # leading inline flags kept
        ("(?x) orders - eu  # a comment", "orders-eu", True),
        (".*", "__consumer_offsets", False),
        (".*", "__mine", False),
        (".*", "_single", True),
        (".*", "g.orders.changelog", False),  # this group's changelog
        (".*", "other.orders.changelog", True),  # another group's is a topic like any
        ("g\\..*", "g.orders.changelog", False),
        ("g\\..*", "g.orders", True),
    ],
)
def test_a_pattern_takes_whole_names_and_never_internal_or_own_changelogs(
    pattern: str, topic: str, taken: bool
) -> None:
    assert takes(pattern, topic) is taken


def test_the_changelog_suffix_is_the_changelogs() -> None:
    assert CHANGELOG_SUFFIX == SUFFIX
    assert not takes(".*", changelog_topic("my-group", "orders"), "my-group")


def test_a_group_id_with_regex_characters_is_taken_literally() -> None:
    assert not takes(".*", "a+b.orders.changelog", "a+b")
    assert takes(".*", "aab.orders.changelog", "a+b")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topics": ()}, "or a --topic-pattern"),
        ({"topics": ("t",), "topic_pattern": "t.*"}, "not both"),
        ({"topics": (), "topic_pattern": ""}, "must not be empty"),
        ({"topics": (), "topic_pattern": "orders-("}, "not a valid regular expression"),
    ],
)
def test_topics_or_a_pattern(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(group_id="g", **kwargs)  # type: ignore[arg-type]


def test_a_bad_pattern_exits_2_before_anything_is_opened(tmp_path: Path) -> None:
    database = tmp_path / "state.db"
    result = CliRunner().invoke(
        main, ["run", "-g", "g", "--topic-pattern", "a[", "--database", str(database)]
    )
    assert result.exit_code == 2, result.output
    assert "--topic-pattern" in result.output
    assert not database.exists()
    both = CliRunner().invoke(main, ["run", "-g", "g", "-t", "t", "--topic-pattern", "t"])
    assert both.exit_code == 2
    assert "not both" in both.output


async def test_a_claim_records_its_topics_processors_and_refuses_another_set(
    tmp_path: Path,
) -> None:
    store = await open_store(tmp_path / "state.db")

    async def claim(processors: list[str]) -> None:
        await store.claim(
            bounds(TopicPartition("found-later", 0)),
            "me",
            "reset",
            lambda tp: [],
            topic_ids={},
            isolation_level="read_committed",
            processors=processors,
        )

    try:
        await claim(["counts"])
        await claim(["counts"])  # the same set again: accepted
        with pytest.raises(ProcessorError, match="found-later"):
            await claim(["counts", "latest"])
        await store.check_processors(["found-later"], ["counts"])
    finally:
        await store.database.close()


async def test_a_changelog_followed_before_the_first_claim_records_the_processors(
    tmp_path: Path,
) -> None:
    # A topic the pattern found while running may get positions from its changelog (a restore,
    # the standby) before this file claims it: its processors are recorded first, so that its
    # claim does not take the positions for a state made before processors were recorded.
    store = await open_store(tmp_path / "state.db")
    try:
        await store.database.transaction(
            functools.partial(
                check_identity,
                topic="found-later",
                changelog="g.found-later.changelog",
                changelog_id=None,
                input_id=None,
                now=utc_now(),
                processors=["latest"],
            )
        )
        rows = query(tmp_path / "state.db", "SELECT topic, processor FROM topic_processors")
        assert rows == [("found-later", "latest")]
        await store.check_processors(["found-later"], ["latest"])
    finally:
        await store.database.close()
