"""Every row a batch changes reaches the changelog, however SQLite changes it: rows that a
REPLACE deletes through a second UNIQUE index (``INSERT OR REPLACE``, an UPSERT), rows a user's
trigger writes in another table, and the cascade a schema declares (refused: it never runs).
Real SQLite files, no Kafka: captured on one file, applied to a second, compared row for row."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sqlstate.changelog.records import RowChange, decode
from sqlstate.changelog.tables import state_tables
from sqlstate.errors import DatabaseError, ProcessorError
from sqlstate.processors.base import Processor, Record
from sqlstate.processors.sql_file import SqlFileProcessor
from tests.support.db import query
from tests.support.processing import fold, record
from tests.unit.test_changelog_rows import T0, T1, Changelog, Owner, assert_same_state, follow

# Accounts keyed by id, each holding an email no other account of its partition holds: a record
# (key: id, value: email) that gives an account another's email deletes the other account.
ACCOUNTS = """\
CREATE TABLE accounts (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, id TEXT NOT NULL, email TEXT NOT NULL,
    since INTEGER NOT NULL, PRIMARY KEY (topic, partition, id)
);
CREATE UNIQUE INDEX accounts_email ON accounts (topic, partition, email);
"""
FORGET = "DELETE FROM accounts WHERE topic = :topic AND partition = :partition;"
INSERT_OR_REPLACE = (
    "INSERT OR REPLACE INTO accounts VALUES (:topic, :partition, :key, :value, :offset);"
)
# An UPSERT on the id (an id with a row moves its since), whose insert of a new id goes through
# the email index with OR REPLACE.
UPSERT = (
    "INSERT OR REPLACE INTO accounts VALUES (:topic, :partition, :key, :value, :offset)\n"
    "ON CONFLICT (topic, partition, id) DO UPDATE SET since = excluded.since;"
)
# The same through a constraint declared ON CONFLICT REPLACE, with a plain UPSERT.
DECLARED = ACCOUNTS.replace(
    "PRIMARY KEY (topic, partition, id)",
    "PRIMARY KEY (topic, partition, id),\n    UNIQUE (topic, partition, email) ON CONFLICT REPLACE",
).replace("CREATE UNIQUE INDEX accounts_email ON accounts (topic, partition, email);\n", "")
PLAIN_UPSERT = UPSERT.replace("INSERT OR REPLACE", "INSERT")

# Triggers that write other tables: how many accounts each partition holds, and each account's
# sessions, deleted with it (a cascade written as a trigger).
DERIVED = """\
CREATE TABLE members (topic TEXT NOT NULL, partition INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (topic, partition));
CREATE TABLE sessions (topic TEXT NOT NULL, partition INTEGER NOT NULL, id TEXT NOT NULL,
    opened INTEGER NOT NULL, PRIMARY KEY (topic, partition, id, opened));
CREATE TRIGGER joined AFTER INSERT ON accounts BEGIN
    INSERT INTO members VALUES (NEW.topic, NEW.partition, 1)
    ON CONFLICT (topic, partition) DO UPDATE SET n = n + 1;
    INSERT INTO sessions VALUES (NEW.topic, NEW.partition, NEW.id, NEW.since);
END;
CREATE TRIGGER left AFTER DELETE ON accounts BEGIN
    UPDATE members SET n = n - 1 WHERE topic = OLD.topic AND partition = OLD.partition;
    DELETE FROM sessions
    WHERE topic = OLD.topic AND partition = OLD.partition AND id = OLD.id;
END;
"""


def sql_file(schema: str, record_statement: str, forget: str = FORGET) -> str:
    """A ``--sql`` processor file's text."""
    return (
        f"-- sqlstate: schema\n{schema}\n-- sqlstate: record\n{record_statement}\n"
        f"-- sqlstate: forget\n{forget}\n"
    )


def sql_processor(
    path: Path, schema: str, record_statement: str, forget: str = FORGET
) -> SqlFileProcessor:
    path.write_text(sql_file(schema, record_statement, forget))
    return SqlFileProcessor.load(path)


def accounts_records(partition: int, start: int, count: int) -> list[Record]:
    """Ids a0..a5 taking emails e0..e3 in turn: most records move an email to another id."""
    tp = T0 if partition == 0 else T1
    return [
        record(tp, offset, f"a{offset % 6}", f"e{(offset * 7 + partition) % 4}")
        for offset in range(start, start + count)
    ]


def _text(part: object) -> str:
    """A key or value as the processor stores it: raw bytes from Kafka are UTF-8 here."""
    return part.decode() if isinstance(part, bytes) else str(part)


def expected_accounts(records: Sequence[Record], upsert: bool) -> set[tuple[object, ...]]:
    """The oracle: an account takes its email from whichever account held it; under an UPSERT
    an id that has a row only moves its ``since`` (the id's conflict is checked first)."""
    rows: dict[tuple[str, int, str], tuple[str, int]] = {}
    for r in records:
        key, value = (r.topic, r.partition, _text(r.key)), _text(r.value)
        if upsert and key in rows:
            rows[key] = (rows[key][0], r.offset)
            continue
        for other, (email, _) in list(rows.items()):
            if email == value and other[:2] == key[:2]:
                del rows[other]
        rows[key] = (value, r.offset)
    return {(*key, email, since) for key, (email, since) in rows.items()}


async def owner_then_standby(tmp_path: Path, members: list[Processor]) -> list[Record]:
    """Batches of both partitions committed on ``owner.db`` with capture, its compacted
    changelog checked against its rows, then applied to ``standby.db``; returns the records."""
    changelog = Changelog()
    records: list[Record] = []
    async with Owner(tmp_path / "owner.db", members, changelog) as owner:
        await owner.claim([T0, T1])
        for start in range(0, 60, 12):
            for partition in (0, 1):
                batch = accounts_records(partition, start, 12)
                records += batch
                await owner.commit(T0 if partition == 0 else T1, batch)
    kept = compacted(changelog)
    for table in state_tables(members):
        owned = set(query(tmp_path / "owner.db", f'SELECT * FROM "{table.name}"'))
        assert kept.get(table.name, set()) == owned, table.name
    # Each partition's changelog in one apply: a cut inside a batch's transaction could leave a
    # row that a later record of it deleted (its tombstone reduced away by the row's last
    # value), which is why a standby applies a changelog transaction whole.
    await follow(tmp_path / "standby.db", members, changelog, chunks=1)
    return records


def compacted(changelog: Changelog) -> dict[str, set[tuple[Any, ...]]]:
    """What compaction keeps of ``changelog`` (each key's last record): the rows by table. A
    row deleted without a tombstone would still be there."""
    rows: dict[str, set[tuple[Any, ...]]] = defaultdict(set)
    for records in changelog.records.values():
        for key, value in {key: value for key, value, _ in records}.items():
            change = decode(key, value)
            if isinstance(change, RowChange) and change.row is not None:
                rows[change.table].add(tuple(change.row.values()))
    return rows


@pytest.mark.parametrize(
    ("schema", "statement", "upsert"),
    [
        (ACCOUNTS, INSERT_OR_REPLACE, False),
        (ACCOUNTS, UPSERT, True),
        (DECLARED, PLAIN_UPSERT, True),
    ],
    ids=["insert-or-replace", "upsert-or-replace", "upsert-on-conflict-replace-constraint"],
)
async def test_rows_a_replace_deletes_through_a_second_unique_index_reach_the_standby(
    tmp_path: Path, schema: str, statement: str, upsert: bool
) -> None:
    members: list[Processor] = [sql_processor(tmp_path / "accounts.sql", schema, statement)]
    records = await owner_then_standby(tmp_path, members)
    expected = expected_accounts(records, upsert)
    assert len(expected) < len({(r.partition, r.key) for r in records}), "no row was replaced"
    for file in ("owner.db", "standby.db"):
        assert set(query(tmp_path / file, "SELECT * FROM accounts")) == expected, file
    assert_same_state(tmp_path / "owner.db", tmp_path / "standby.db", members)


async def test_a_user_trigger_writing_other_tables_sees_and_ships_every_deleted_row(
    tmp_path: Path,
) -> None:
    """The rows a REPLACE deletes fire the user's DELETE trigger too; what it writes in other
    tables (a count, a cascade by trigger) reaches the standby like any row."""
    members: list[Processor] = [
        sql_processor(tmp_path / "accounts.sql", ACCOUNTS + DERIVED, INSERT_OR_REPLACE)
    ]
    records = await owner_then_standby(tmp_path, members)
    expected = expected_accounts(records, upsert=False)
    for file in ("owner.db", "standby.db"):
        path = tmp_path / file
        assert set(query(path, "SELECT * FROM accounts")) == expected, file
        assert query(path, "SELECT topic, partition, n FROM members ORDER BY partition") == [
            ("t", p, sum(1 for row in expected if row[1] == p)) for p in (0, 1)
        ], file
        assert set(query(path, "SELECT topic, partition, id, opened FROM sessions")) == {
            row[:3] + row[4:] for row in expected
        }, file
    assert_same_state(tmp_path / "owner.db", tmp_path / "standby.db", members)


async def test_the_same_processor_makes_the_same_rows_without_changelog(tmp_path: Path) -> None:
    """Single host, no capture installed: the user's DELETE trigger fires for the rows a REPLACE
    deletes there too, so a processor's state does not depend on the mode."""
    members: list[Processor] = [
        sql_processor(tmp_path / "accounts.sql", ACCOUNTS + DERIVED, INSERT_OR_REPLACE)
    ]
    batches = [accounts_records(0, start, 12) for start in range(0, 60, 12)]
    await fold(tmp_path / "single.db", members, batches)
    expected = expected_accounts([r for batch in batches for r in batch], upsert=False)
    assert set(query(tmp_path / "single.db", "SELECT * FROM accounts")) == expected
    assert query(tmp_path / "single.db", "SELECT n FROM members") == [(len(expected),)]


def pets(path: Path, reference: str) -> SqlFileProcessor:
    """A processor whose ``pets`` refer to ``owners`` as ``reference`` says."""
    return sql_processor(
        path,
        "CREATE TABLE owners (topic TEXT NOT NULL, partition INTEGER NOT NULL, id TEXT NOT NULL,"
        " PRIMARY KEY (topic, partition, id));\n"
        "CREATE TABLE pets (topic TEXT NOT NULL, partition INTEGER NOT NULL, name TEXT NOT NULL,"
        f" owner TEXT {reference}, PRIMARY KEY (topic, partition, name));",
        "INSERT OR REPLACE INTO pets VALUES (:topic, :partition, :key, :value);",
        "DELETE FROM pets WHERE topic = :topic AND partition = :partition;",
    )


@pytest.mark.parametrize(
    "reference",
    [
        "REFERENCES owners ON DELETE CASCADE",
        "REFERENCES owners (id) ON UPDATE SET NULL",
        "REFERENCES owners ON DELETE SET DEFAULT",
    ],
)
def test_a_foreign_key_action_is_refused_under_changelog(tmp_path: Path, reference: str) -> None:
    """sqlstate runs SQLite with foreign_keys off, on every host, so a declared cascade would
    never run: under --changelog the schema is refused at start, saying to write a trigger. A
    foreign key that changes no row is accepted."""
    with pytest.raises(ProcessorError, match=r"table pets has a foreign key to owners with ON"):
        state_tables([pets(tmp_path / "pets.sql", reference)])
    restrict = pets(tmp_path / "pets.sql", "REFERENCES owners ON DELETE RESTRICT")
    assert [table.name for table in state_tables([restrict])][-2:] == ["owners", "pets"]


CHAIN = """\
CREATE TABLE chain (topic TEXT NOT NULL, partition INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, n));
CREATE TRIGGER next AFTER INSERT ON chain {when} BEGIN
    INSERT INTO chain VALUES (NEW.topic, NEW.partition, NEW.n + 1);
END;
"""


async def test_a_trigger_that_fires_itself_recurses_until_its_when_stops_it(
    tmp_path: Path,
) -> None:
    """The other side of recursive_triggers, in both modes: a trigger that writes its own table
    fires again, as its WHEN allows; one that never stops fails the batch (rolled back)."""
    statement = "INSERT INTO chain VALUES (:topic, :partition, 0);"
    forget = "DELETE FROM chain WHERE topic = :topic AND partition = :partition;"
    bounded = sql_processor(
        tmp_path / "chain.sql", CHAIN.format(when="WHEN NEW.n < 5"), statement, forget
    )
    await fold(tmp_path / "bounded.db", [bounded], [[record(T0, 0, "k")]])
    assert query(tmp_path / "bounded.db", "SELECT n FROM chain ORDER BY n") == [
        (n,) for n in range(6)
    ]
    endless = sql_processor(tmp_path / "chain.sql", CHAIN.format(when=""), statement, forget)
    with pytest.raises(DatabaseError, match="too many levels of trigger recursion"):
        await fold(tmp_path / "endless.db", [endless], [[record(T0, 0, "k")]])
    assert query(tmp_path / "endless.db", "SELECT count(*) FROM chain") == [(0,)]
