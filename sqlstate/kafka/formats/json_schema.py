"""JSON Schema payloads: JSON text, validated against the registered schema (jsonschema).

The payload is UTF-8 JSON text and reaches processors as it came. The schema's ``$schema``
picks the draft (draft 7 when it names none); references to other documents are not fetched.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import jsonschema
import jsonschema.exceptions
import jsonschema.validators


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def compile_schema(
    schema_text: str, references: Sequence[tuple[str, str]] = ()
) -> Callable[[bytes], str]:
    """The decoder of payloads valid under this JSON schema; ``ValueError`` if it is none, or
    if it refers to other registered schemas (not supported yet)."""
    if references:
        raise ValueError("JSON schemas that refer to other registered schemas are not supported")
    try:
        schema: Any = json.loads(schema_text)
        validator_class = jsonschema.validators.validator_for(
            schema, default=jsonschema.Draft7Validator
        )
        validator_class.check_schema(schema)
    except (ValueError, jsonschema.exceptions.SchemaError) as error:
        raise ValueError(f"not a JSON schema: {error}") from error
    validator = validator_class(schema)

    def decode(payload: bytes) -> str:
        text = payload.decode("utf-8")
        document = json.loads(text, parse_constant=_not_json)
        error = jsonschema.exceptions.best_match(validator.iter_errors(document))
        if error is not None:
            where = "".join(f"[{part!r}]" for part in error.absolute_path) or "the document"
            raise ValueError(f"{where}: {error.message}")
        return text

    return decode
