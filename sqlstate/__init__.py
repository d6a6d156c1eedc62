"""sqlstate: keep derived state from Kafka topics in SQLite, exactly once.

``wait_for`` is the one call a service needs beside its producer: it waits until the file holds
the records it just produced (docs/reading-state.md, "Read your writes").
"""

from sqlstate.state.wait import NotAppliedInTime, PartitionWait, wait_for
from sqlstate.version import __version__

__all__ = ["NotAppliedInTime", "PartitionWait", "__version__", "wait_for"]
