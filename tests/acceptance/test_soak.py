"""A short fault soak inside ``make test``: kills, pauses and a broker bounce, then the oracle.

The long one runs with ``make soak DURATION=...`` (and a two-minute one in ``.ci/run``); this one
keeps every kind of fault in the ordinary test run, in under a minute and a half.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.soak.soak import Options, run_soak
from tests.support.broker import AsyncBrokerControl


@pytest.mark.timeout(300)  # 40 s of faults, then a drain bounded by the soak itself
async def test_short_soak_loses_and_duplicates_nothing(
    tmp_path: Path, broker_control: AsyncBrokerControl
) -> None:
    options = Options(duration=40, interval=5, broker_bounces=1, rate=200, workdir=tmp_path)
    summary = await run_soak(options, broker_control)
    print(summary.text())
    assert summary.ok, summary.text()
    assert summary.verdicts["state.db"].read_back > 0
    assert summary.tally.broker_bounces == 1
