"""sqlstate's version, as installed: a module of its own, so that any layer can name it without
importing the package's public face (``sqlstate/__init__.py``), which reaches into the state."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sqlstate")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"
