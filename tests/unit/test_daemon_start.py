"""The start-up connect retries and a stop signal (no broker needed: the point is what the
daemon does with an answer it cannot get)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError

from sqlstate.app.daemon import _start_unless_stopped
from sqlstate.settings import Settings


class _RefusedConsumer:
    """A consumer that never connects; on its second attempt the stop signal arrives just as
    the attempt fails. Python 3.11's ``wait_for`` then returns the attempt's own error instead
    of the cancellation, so the signal is seen only if the retry loop looks at ``stop``."""

    def __init__(self, signal: Callable[[], None]) -> None:
        self.signal = signal
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        if self.starts == 2:
            self.signal()
        raise KafkaConnectionError("Unable to bootstrap")


async def test_a_stop_while_connecting_ends_the_retries_even_if_the_cancel_is_lost() -> None:
    settings = Settings(topics=("t",), group_id="g", bootstrap_servers="127.0.0.1:1")
    stop = asyncio.Event()
    on_stop: list[Callable[[], None]] = []

    def signal() -> None:
        stop.set()
        for callback in list(on_stop):
            callback()

    consumer = _RefusedConsumer(signal)
    began = time.monotonic()
    started = await asyncio.wait_for(
        _start_unless_stopped(cast(AIOKafkaConsumer, consumer), settings, stop, on_stop), 10
    )
    assert started is False
    assert consumer.starts == 2  # no attempt after the signal
    assert time.monotonic() - began < 3
