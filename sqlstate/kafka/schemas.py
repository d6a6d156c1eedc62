"""Registered schemas, fetched once per id and compiled once per format: the decoders the
avro, protobuf and json-schema deserializers use (``decoding.py``).

A deserializer runs inside aiokafka and cannot wait for the registry: a key or value whose
schema is not compiled yet becomes ``Pending``. Right after ``getmany()`` the batch loop has
``Decoding.complete`` fetch what is missing here (``resolve``) and decode those again.

A registry that does not answer is waited for, with a growing backoff, for as long as it
takes: the batch is not committed meanwhile, so no position moves past its records, and
``/healthz`` says it is degraded (``Stats.schema_registry_unavailable``). A one-shot command
(``sqlstate verify``) gives ``give_up_after_s`` instead: past it, ``SchemaRegistryError``.

A schema id the registry does not know, or a schema that cannot serve the format, gets a
decoder that fails: its records follow ``--on-bad-record``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Set

from sqlstate.errors import SchemaRegistryError
from sqlstate.kafka.formats import PayloadDecoder, compile_decoder
from sqlstate.kafka.registry import (
    Reference,
    RegisteredSchema,
    RegistryClient,
    RegistryUnavailable,
)
from sqlstate.observe.logs import LogEvent, rounded
from sqlstate.observe.stats import Stats
from sqlstate.settings import REGISTRY_FORMATS, Settings

logger = logging.getLogger("sqlstate.schema_registry")  # its documented name
_UNAVAILABLE = LogEvent(
    logger,
    logging.WARNING,
    "schema_registry_unavailable",
    "the schema registry does not answer (%(reason)s); the batch waits for it, uncommitted",
)
_AVAILABLE = LogEvent(
    logger,
    logging.INFO,
    "schema_registry_available",
    "the schema registry answers again after %(outage_s).1fs",
    data={"outage_s": rounded(3)},
)
_FETCHED = LogEvent(
    logger,
    logging.INFO,
    "schema_fetched",
    "schema %(schema_id)d (%(schema_type)s) fetched from the schema registry",
)
_UNUSABLE = LogEvent(
    logger,
    logging.WARNING,
    "schema_unusable",
    "schema %(schema_id)d cannot decode %(format)s: %(reason)s; its records are bad records",
)

_FIRST_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 10.0
# The key of a decoder: the format and the schema id.
DecoderKey = tuple[str, int]


class Pending:
    """In place of a key or value whose schema is not fetched yet: decoded again after the
    batch's ``resolve``."""

    __slots__ = ("format", "raw", "schema_id", "what")

    def __init__(self, raw: bytes, what: str, format: str, schema_id: int) -> None:
        self.raw = raw
        self.what = what
        self.format = format
        self.schema_id = schema_id


def _failing(reason: str) -> PayloadDecoder:
    def decode(payload: bytes) -> str:
        raise LookupError(reason)

    return decode


class Schemas:
    """The schemas of one daemon, by id, and their decoders, by format and id."""

    def __init__(
        self, client: RegistryClient, stats: Stats, give_up_after_s: float | None = None
    ) -> None:
        self._client = client
        self._stats = stats
        self._give_up_after_s = give_up_after_s
        self._fetched: dict[int, RegisteredSchema | None] = {}
        self._referenced: dict[Reference, RegisteredSchema | None] = {}
        self.decoders: dict[DecoderKey, PayloadDecoder] = {}

    async def resolve(self, wanted: Set[DecoderKey], stop: asyncio.Event) -> bool:
        """Compile a decoder for each of ``wanted``, fetching the schemas not fetched yet and
        waiting for the registry as long as it does not answer. False: ``stop`` came first."""
        missing = sorted({schema_id for _, schema_id in wanted} - set(self._fetched))
        if missing and not await self._fetch(missing, stop):
            return False
        for key in wanted - set(self.decoders):
            self.decoders[key] = self._compile(*key)
        return True

    async def _fetch(self, schema_ids: list[int], stop: asyncio.Event) -> bool:
        since: float | None = None
        started = time.monotonic()
        backoff_s = _FIRST_BACKOFF_S
        while True:
            try:
                for schema_id in schema_ids:
                    if schema_id not in self._fetched:
                        schema = await self._client.schema(schema_id)
                        if schema is not None:
                            await self._fetch_references(schema)
                            _FETCHED.log(schema_id=schema_id, schema_type=schema.schema_type)
                        # Only once its references are fetched too: a retry fetches them again.
                        self._fetched[schema_id] = schema
            except RegistryUnavailable as error:
                if since is None:
                    since = time.monotonic()
                    _UNAVAILABLE.log(reason=str(error))
                waited_s = time.monotonic() - started
                if self._give_up_after_s is not None and waited_s >= self._give_up_after_s:
                    raise SchemaRegistryError(
                        f"the schema registry at {self._client.url} did not answer for"
                        f" {waited_s:.0f} s ({error})"
                    ) from error
                self._stats.schema_registry_unavailable = f"the schema registry: {error}"
                pause_s = backoff_s
                if self._give_up_after_s is not None:
                    pause_s = min(pause_s, self._give_up_after_s - waited_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause_s)
                if stop.is_set():
                    return False
                backoff_s = min(backoff_s * 2, _MAX_BACKOFF_S)
                continue
            if since is not None:
                self._stats.schema_registry_unavailable = None
                _AVAILABLE.log(outage_s=time.monotonic() - since)
            return True

    async def _fetch_references(self, schema: RegisteredSchema) -> None:
        """The schemas ``schema`` refers to, and theirs, each once."""
        for reference in schema.references:
            if reference not in self._referenced:
                referenced = await self._client.referenced(reference)
                if referenced is not None:
                    await self._fetch_references(referenced)
                self._referenced[reference] = referenced

    def _dependencies(self, schema: RegisteredSchema) -> list[tuple[str, str]]:
        """(name, text) of every schema ``schema`` refers to, directly or not, each after the
        schemas it refers to itself. ``ValueError`` for one the registry does not hold."""
        found: dict[str, str] = {}

        def visit(current: RegisteredSchema) -> None:
            for reference in current.references:
                referenced = self._referenced.get(reference)
                if referenced is None:
                    raise ValueError(
                        f"the schema registry has no {reference.subject} version"
                        f" {reference.version}, which it refers to as {reference.name}"
                    )
                if reference.name not in found:
                    visit(referenced)
                    found[reference.name] = referenced.text

        visit(schema)
        return list(found.items())

    def _compile(self, format: str, schema_id: int) -> PayloadDecoder:
        schema = self._fetched[schema_id]
        if schema is None:
            return _failing(f"the schema registry has no schema {schema_id}")
        try:
            references = self._dependencies(schema)
            return compile_decoder(format, schema.schema_type, schema.text, references)
        except ValueError as error:
            _UNUSABLE.log(schema_id=schema_id, format=format, reason=str(error))
            return _failing(f"schema {schema_id} cannot decode {format}: {error}")


def schemas_for(
    settings: Settings, stats: Stats, give_up_after_s: float | None = None
) -> Schemas | None:
    """The daemon's ``Schemas``, when a key or value format reads the schema registry
    (``give_up_after_s``: see ``Schemas``; None waits as long as it takes)."""
    if not {settings.key_format, settings.value_format} & set(REGISTRY_FORMATS):
        return None
    assert settings.schema_registry_url is not None  # the settings check it
    client = RegistryClient(
        settings.schema_registry_url,
        settings.schema_registry_username,
        settings.schema_registry_password,
        settings.schema_registry_ca_file,
    )
    return Schemas(client, stats, give_up_after_s)
