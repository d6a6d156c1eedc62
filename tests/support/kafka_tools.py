"""Kafka's own consumer-group command, as operators run it (``kafka-consumer-groups.sh``).

The command is ``org.apache.kafka.tools.consumer.group.ConsumerGroupCommand`` in
``org.apache.kafka:kafka-tools`` of the broker's pinned version, which is not among the broker's
jars: ``tools.kafka_broker`` fetches it with Maven on first use into
``.cache/kafka-<version>/tools/`` (``broker/tools-pom.xml``), and it runs here with the machine's
java (``JAVA``, else the one on PATH). Each run starts a JVM: about three seconds.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools.kafka_broker import BrokerControl

CONSUMER_GROUP_COMMAND = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"
LOG4J_CONFIG = Path(__file__).resolve().parents[2] / "broker" / "tools-log4j2.properties"
TIMEOUT_S = 90.0  # a JVM start and an AdminClient's round trips; the first run also fetches jars
# A short-lived command: the quick compiler only, and one garbage collector thread, start it in
# about half the CPU time of the JVM's defaults. Its output is the same.
JVM_OPTIONS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
# Several of these JVMs starting at once on a small machine take many times as long each (and
# slow every other test meanwhile): the tests that run the command go in one xdist group, whose
# tests one worker runs one after the other (``make test`` runs --dist loadgroup).
ONE_COMMAND_AT_A_TIME = pytest.mark.xdist_group("kafka_consumer_groups_command")


@dataclass(frozen=True)
class GroupOffset:
    """One row of ``--describe --offsets``; None where the tool prints ``-``."""

    group: str
    topic: str
    partition: int
    current_offset: int | None
    log_end_offset: int | None
    lag: int | None
    consumer_id: str | None
    host: str | None
    client_id: str | None


@dataclass(frozen=True)
class ToolRun:
    """What one run of the command printed."""

    arguments: tuple[str, ...]
    stdout: str
    stderr: str


async def tool_classpath(bootstrap: str) -> str:
    """The classpath of the tools, fetched with Maven first if the cache lacks them."""
    tools_dir = await asyncio.to_thread(BrokerControl(bootstrap).fetch_tool_jars)
    return f"{tools_dir}/*"


async def consumer_groups(bootstrap: str, *arguments: str, timeout: float = TIMEOUT_S) -> ToolRun:
    """Run ``kafka-consumer-groups.sh --bootstrap-server BOOTSTRAP ARGUMENTS``.

    A non-zero exit, or an error the tool prints without one, fails with its output.
    """
    java = os.environ.get("JAVA") or shutil.which("java")
    if java is None:
        raise AssertionError("no java: Kafka's consumer-group command needs Java 17 or later")
    command = [
        java,
        *JVM_OPTIONS,
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        "-cp",
        await tool_classpath(bootstrap),
        CONSUMER_GROUP_COMMAND,
        "--bootstrap-server",
        bootstrap,
        *arguments,
    ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    run = ToolRun(tuple(arguments), out.decode(), err.decode())
    # The tool reports some failures (an unknown group, a refused reset) on stdout with exit 0.
    if process.returncode != 0 or run.stdout.lstrip().startswith("Error"):
        raise AssertionError(
            f"kafka-consumer-groups {' '.join(arguments)} exited {process.returncode}:\n"
            f"{run.stdout}\n{run.stderr}"
        )
    return run


def parse_offsets(output: str) -> list[GroupOffset]:
    """The rows of the table that ``--describe`` (``--offsets``) prints, by its header."""
    lines = output.splitlines()
    header_at = next(
        (i for i, line in enumerate(lines) if line.split()[:2] == ["GROUP", "TOPIC"]), None
    )
    if header_at is None:
        raise AssertionError(f"no offsets table in:\n{output}")
    columns = lines[header_at].split()
    rows = []
    for line in lines[header_at + 1 :]:
        if not line.strip():
            continue
        values = dict(zip(columns, line.split(), strict=True))
        rows.append(
            GroupOffset(
                group=values["GROUP"],
                topic=values["TOPIC"],
                partition=int(values["PARTITION"]),
                current_offset=_number(values["CURRENT-OFFSET"]),
                log_end_offset=_number(values["LOG-END-OFFSET"]),
                lag=_number(values["LAG"]),
                consumer_id=_text(values["CONSUMER-ID"]),
                host=_text(values["HOST"]),
                client_id=_text(values["CLIENT-ID"]),
            )
        )
    return sorted(rows, key=lambda row: (row.topic, row.partition))


async def describe_offsets(
    bootstrap: str, group_id: str, *, explicit: bool = False
) -> tuple[ToolRun, list[GroupOffset]]:
    """``--describe --group GROUP`` (with ``explicit``: ``--describe --offsets --group GROUP``,
    the same table asked for by name) and its rows."""
    options = ("--describe", "--offsets") if explicit else ("--describe",)
    run = await consumer_groups(bootstrap, *options, "--group", group_id)
    return run, parse_offsets(run.stdout)


async def reset_offsets(bootstrap: str, group_id: str, topic: str, to_offset: int) -> ToolRun:
    """``--reset-offsets --to-offset N --execute`` on every partition of ``topic``.

    Kafka refuses it while the group has members: an operator stops the consumers first.
    """
    return await consumer_groups(
        bootstrap,
        "--reset-offsets",
        "--group",
        group_id,
        "--topic",
        topic,
        "--to-offset",
        str(to_offset),
        "--execute",
    )


def _number(value: str) -> int | None:
    return None if value == "-" else int(value)


def _text(value: str) -> str | None:
    return None if value == "-" else value
