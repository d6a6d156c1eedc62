"""A short fault soak inside ``make test``: daemon kills and pauses under steady traffic, then the
oracle.

It keeps the soak program itself from rotting, and the faults together: three daemons on one file
killed and frozen at random while plain records and transactions (a third of them aborted) arrive.
The broker is not bounced here: that would stop every other test that runs meanwhile, and the
broker-bounce tests (tests/acceptance/test_broker_bounce.py) kill it under running daemons already.
The soak with broker bounces runs with ``make soak DURATION=...``, and for two minutes in
``.ci/run`` (``make soak-short``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.soak.soak import Options, run_soak
from tests.support.broker import AsyncBrokerControl
from tests.support.kafka import delete_topics
from tools.kafka_broker import BrokerControl


@pytest.mark.timeout(300)  # 20 s of faults, then a drain bounded by the soak itself
async def test_short_soak_loses_and_duplicates_nothing(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    options = Options(duration=20, interval=4, broker_bounces=0, rate=200, workdir=tmp_path)
    # With no bounces the soak never stops the broker: any broker will do.
    summary = await run_soak(options, AsyncBrokerControl(BrokerControl(kafka_bootstrap)))
    # The soak makes its own topic: deleted here, as the topic fixture does, so that a
    # long-lived broker does not load it again at every restart.
    await delete_topics(kafka_bootstrap, [summary.topic])
    print(summary.text())
    assert summary.ok, summary.text()
    assert summary.verdicts[f"state.db {summary.topic}"].read_back > 0
    assert summary.tally.broker_bounces == 0
