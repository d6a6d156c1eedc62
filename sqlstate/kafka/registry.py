"""The schema registry's client: a registered schema by its id (Confluent's REST API, which
Confluent Schema Registry, Apicurio Registry's ``/apis/ccompat/v7`` and others speak).

One request per schema id, ``GET {url}/schemas/ids/{id}``, and one per schema it references
(``GET {url}/subjects/{subject}/versions/{version}``), made with the standard library in a
thread; the caller caches what it gets. Its answers are of three kinds:

- a schema, or ``None`` for an id, subject or version the registry does not know (404 with error
  code 40403, 40401 or 40402);
- ``RegistryUnavailable``: no answer, a timeout, or a server error; waiting may cure it;
- ``SchemaRegistryError`` (exit code 12): a refused login, or a URL that is not a registry's
  API; waiting will not cure it.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlstate.errors import SchemaRegistryError

# Confluent's error codes for a subject, a version and a schema not found; a bare 404 is a
# wrong URL instead.
_NOT_FOUND = {40401, 40402, 40403}
_TIMEOUT_S = 10.0


class RegistryUnavailable(Exception):
    """The schema registry did not answer, or answered with a server error."""


@dataclass(frozen=True)
class Reference:
    """A schema another one refers to: the name it is referred by (an Avro type's full name, a
    .proto file's import path), and where the registry holds it."""

    name: str
    subject: str
    version: int


@dataclass(frozen=True)
class RegisteredSchema:
    """A schema as the registry holds it: its type (AVRO, PROTOBUF or JSON), its text, and the
    schemas it refers to."""

    schema_type: str
    text: str
    references: tuple[Reference, ...] = ()


class RegistryClient:
    """Asks one schema registry for schemas by id."""

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Accept": "application/vnd.schemaregistry.v1+json, application/json"}
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"
        self._context = ssl.create_default_context(cafile=ca_file) if ca_file else None

    async def schema(self, schema_id: int) -> RegisteredSchema | None:
        """The schema of ``schema_id``, or None when the registry does not know it."""
        return await asyncio.to_thread(
            self._get, f"/schemas/ids/{schema_id}", f"schema {schema_id}"
        )

    async def referenced(self, reference: Reference) -> RegisteredSchema | None:
        """The schema a reference names, or None when the registry does not know it."""
        subject = urllib.parse.quote(reference.subject, safe="")
        path = f"/subjects/{subject}/versions/{reference.version}"
        what = f"{reference.subject} version {reference.version}"
        return await asyncio.to_thread(self._get, path, what)

    def _get(self, path: str, what: str) -> RegisteredSchema | None:
        request = urllib.request.Request(f"{self.url}{path}", headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT_S, context=self._context) as r:
                answer: Any = json.load(r)
        except urllib.error.HTTPError as error:
            with error:
                self._unless_unknown(what, error)
            return None
        # Refused, reset, timed out, cut short; an answer that is not JSON.
        except (OSError, http.client.HTTPException, ValueError) as error:
            raise RegistryUnavailable(f"{self.url}: {_reason(error)}") from error
        not_a_schema = SchemaRegistryError(
            f"the schema registry at {self.url} answered {what} without a schema: check"
            " --schema-registry-url"
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("schema"), str):
            raise not_a_schema
        try:
            references = tuple(
                Reference(str(ref["name"]), str(ref["subject"]), int(ref["version"]))
                for ref in answer.get("references") or ()
            )
        except (KeyError, TypeError, ValueError):
            raise not_a_schema from None
        return RegisteredSchema(
            str(answer.get("schemaType") or "AVRO"), answer["schema"], references
        )

    def _unless_unknown(self, what: str, error: urllib.error.HTTPError) -> None:
        """Raises for every error status but that of an unknown id."""
        if error.code >= 500 or error.code == 429:
            raise RegistryUnavailable(f"{self.url}: HTTP {error.code} {error.reason}")
        if error.code == 404 and _error_code(error) in _NOT_FOUND:
            return
        if error.code in (401, 403):
            raise SchemaRegistryError(
                f"the schema registry at {self.url} refused sqlstate (HTTP {error.code}): check"
                " --schema-registry-username and SQLSTATE_SCHEMA_REGISTRY_PASSWORD"
            )
        raise SchemaRegistryError(
            f"the schema registry at {self.url} answered {what} with HTTP"
            f" {error.code} {error.reason}: check --schema-registry-url (for Apicurio Registry,"
            " it ends in /apis/ccompat/v7)"
        )


def _error_code(error: urllib.error.HTTPError) -> int | None:
    try:
        body: Any = json.loads(error.read())
    except (OSError, ValueError):
        return None
    code = body.get("error_code") if isinstance(body, dict) else None
    return code if isinstance(code, int) else None


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error) or type(error).__name__
