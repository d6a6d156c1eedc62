"""``make demo`` as a newcomer runs it: a topic the demo creates itself, a new database, and a
first screen that shows the ten top keys, counted exactly, without aiokafka's chatter."""

from __future__ import annotations

import asyncio
import re
import sys
import uuid
from collections import Counter
from pathlib import Path

from tests.support.kafka import delete_topics, expected_counts

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = 3000


def printed_table(output: str) -> list[tuple[str, int]]:
    """The rows ``sqlite3 -header -column`` printed after the demo showed its query."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("$ sqlite3"))
    header, rule, *rows = [line for line in lines[start + 1 :] if line.strip()]
    assert header.split() == ["key", "count"], output
    assert set(rule.split()) == {"-" * len(word) for word in rule.split()}, output
    return [(key, int(count)) for key, count in (row.split() for row in rows)]


async def test_the_demo_shows_the_top_ten_keys_of_a_new_topic(
    kafka_bootstrap: str, tmp_path: Path, group_id: str
) -> None:
    # A topic nobody created yet: the demo creates it, as `make demo` does on a fresh broker.
    topic = f"demo-{uuid.uuid4().hex[:12]}"
    demo = await asyncio.create_subprocess_exec(
        sys.executable,
        "tools/demo.py",
        "--bootstrap",
        kafka_bootstrap,
        "--topic",
        topic,
        "--group-id",
        group_id,
        "--database",
        str(tmp_path / "demo.db"),
        "--messages",
        str(MESSAGES),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = (out.decode() for out in await asyncio.wait_for(demo.communicate(), 100))
        screen = f"--- stdout\n{stdout}\n--- stderr\n{stderr}"
        assert demo.returncode == 0, screen

        totals: Counter[str] = Counter()
        for (_, key), count in (await expected_counts(kafka_bootstrap, topic)).items():
            assert key is not None
            totals[key.decode()] += count
        assert totals.total() == MESSAGES
        # The query's order: highest count first, ties by key.
        top_ten = sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:10]
        assert printed_table(stdout) == top_ten, screen

        # The default level: sqlstate's own lines, no aiokafka line on a clean start.
        assert not re.search(r"(DEBUG|INFO|WARNING|ERROR)\s+aiokafka", stderr), screen
        assert "GroupCoordinatorNotAvailable" not in stderr, screen
    finally:
        if demo.returncode is None:
            demo.kill()
            await demo.wait()
        await delete_topics(kafka_bootstrap, [topic])
