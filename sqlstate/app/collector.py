"""Python's cyclic garbage collector, set for the batch loop.

Every record of a batch is an object the collector tracks (a ``ConsumerRecord``, or aiokafka's
bare record and its list of headers: ``sqlstate/kafka/client.py``), and a batch's records live
until its transaction commits, with the next batch already fetched beside it. With
Python's default threshold (a young-generation collection every 700 net allocations) the
collector runs every few hundred records and walks the records in flight again and again: on
the bench's topic that took about 0.7 µs per record, a third of what the bare consumer costs.

Nearly all of those objects are freed by reference counting the moment their batch is done; the
collector is only needed for reference cycles, which the loop makes few of. So while the loop
runs, the young generation's threshold is raised above what the batches in flight hold: a
collection then comes only once that much garbage has piled up in cycles. The older generations
keep Python's defaults, and every setting is restored when the loop ends.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: The young generation's threshold, at least: net allocations of tracked objects between two
#: collections. Also the most cyclic garbage that can wait for one (a few MiB).
MIN_THRESHOLD = 100_000
#: ... and at most: past it, with huge batches, the collector runs while they are in flight
#: rather than let that much cyclic garbage wait.
MAX_THRESHOLD = 1_000_000
#: Tracked objects per record a batch may hold while in flight (the record, and what the
#: processors make of it), times the two batches of the pipeline.
_OBJECTS_PER_RECORD_IN_FLIGHT = 8


def young_threshold(max_records: int) -> int:
    """The young generation's threshold for batches of at most ``max_records``."""
    return min(MAX_THRESHOLD, max(MIN_THRESHOLD, _OBJECTS_PER_RECORD_IN_FLIGHT * max_records))


@contextlib.contextmanager
def tuned(max_records: int) -> Iterator[None]:
    """Raise the young generation's threshold for the duration (see the module docstring)."""
    before = gc.get_threshold()
    gc.set_threshold(young_threshold(max_records), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
