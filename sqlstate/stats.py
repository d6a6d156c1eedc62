"""Counters of what the daemon has done, for progress logs, metrics and tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Stats:
    records: int = 0
    batches: int = 0
    rebalances: int = 0
    fenced_batches: int = 0
    out_of_range_resets: int = 0
