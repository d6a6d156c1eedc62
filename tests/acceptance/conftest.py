"""Fixtures for tests that run the ``sqlstate`` command as a subprocess."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.daemon import Daemon


@pytest.fixture
async def daemons() -> AsyncIterator[list[Daemon]]:
    """Every daemon a test appends here is stopped at its end, whatever happened."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        await daemon.stop_quietly()
