"""sqlstate: keep derived state from Kafka topics in SQLite, exactly once."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sqlstate")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
