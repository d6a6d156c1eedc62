"""Every error sqlstate reports to a person: one base class, a clear message, an exit code.

The CLI prints ``str(error)`` as one line and exits with ``error.exit_code``; the traceback is shown
only with ``-v``. ``retriable`` says whether trying the same thing again later may succeed.
``leaves_database_unchanged``: the error promises that the run wrote nothing, so the daemon closes
the database without letting SQLite checkpoint its WAL (which would rewrite the main file).
"""

from __future__ import annotations


class SqlstateError(Exception):
    """sqlstate failed."""

    exit_code = 1
    retriable = False
    leaves_database_unchanged = False

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(SqlstateError):
    """The settings are not valid."""

    exit_code = 2


class IsolationLevelError(ConfigError):
    """The counts were made with another isolation level than this run's."""

    leaves_database_unchanged = True


class ChangelogModeError(ConfigError):
    """--changelog on a file whose state was made without it, or the other way round."""


class DatabaseError(SqlstateError):
    """The database cannot be used."""

    exit_code = 3


class SchemaTooNewError(DatabaseError):
    """The database was written by a newer sqlstate; upgrade sqlstate to use it."""


class DatabaseBusyError(DatabaseError):
    """The database is locked by another connection."""

    retriable = True


class BrokerError(SqlstateError):
    """The Kafka cluster cannot be used."""

    exit_code = 4
    retriable = True


class AuthenticationError(BrokerError):
    """Kafka refused sqlstate's SASL login or TLS handshake."""

    retriable = False


class TopicNotFoundError(BrokerError):
    """A topic to consume does not exist."""

    retriable = False


class OutOfRangeError(SqlstateError):
    """A stored position no longer exists in Kafka, or its topic was deleted and created again,
    and the policy is ``fail``."""

    exit_code = 5
    leaves_database_unchanged = True


class ChangelogLostError(OutOfRangeError):
    """A changelog no longer holds what this file applied from it: deleted, recreated, or records
    deleted. Restoring or following it would lose state."""

    # Found at a claim or by the standby, after the run's other transactions: nothing more is
    # written, but the file may have moved since the start.
    leaves_database_unchanged = False


class RebalanceError(SqlstateError):
    """Partitions could not be claimed or released during a rebalance."""

    exit_code = 6


class ProcessorError(ConfigError):
    """A processor cannot be loaded, or would break the processor contract."""


class KafkaRefusedError(SqlstateError):
    """Kafka answered with an error that retrying will not fix."""

    exit_code = 7


class BadRecordError(SqlstateError):
    """A record could not be decoded and ``--on-bad-record`` is ``fail``."""

    exit_code = 8


class RejectionLimitError(SqlstateError):
    """More records in a row failed in the processors than --max-rejected-in-a-row allows, under
    --on-processor-error dead-letter: the fault is likely not the records' but the processor's or
    the database's. The batch that crossed the limit is not committed."""

    exit_code = 11


class ChangelogTopicError(ConfigError):
    """A changelog topic cannot be named, created or used as sqlstate needs it."""


class ChangelogError(BrokerError):
    """A changelog transaction failed and was not committed: roll back the batch."""


class ChangelogFenced(ChangelogError):
    """Another owner claimed the partition: its producer fenced this one for good.

    ``kept``: the producer was kept through a rebalance and had not published since, so the
    producer that fenced it may be of an owner the group has revoked since (this member was out
    of the group meanwhile): the partition is claimed again at once, with a new producer.
    """

    retriable = False

    def __init__(self, message: str, *, kept: bool = False) -> None:
        super().__init__(message)
        self.kept = kept


class WaitTimeoutError(SqlstateError, TimeoutError):
    """The database's positions did not pass the offsets waited for in time."""

    # timeout(1)'s code: scripts already read it as "gave up waiting".
    exit_code = 124


class SchemaRegistryError(SqlstateError):
    """The schema registry refused sqlstate's requests, or is not a schema registry."""

    exit_code = 12


class HandedOverError(SqlstateError):
    """sqlstate rebuild handed the file over to a new set of processors: restart with the new
    processor flags (the restart continues from the handed-over positions)."""

    exit_code = 13
