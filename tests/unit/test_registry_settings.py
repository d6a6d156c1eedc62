"""The schema registry's settings: what the avro, protobuf and json-schema formats need."""

from __future__ import annotations

from pathlib import Path

import pytest

from sqlstate.errors import ConfigError
from sqlstate.settings import Settings

BASE = {"topics": ("t",), "group_id": "g"}


def test_a_registry_format_needs_the_registry_url() -> None:
    with pytest.raises(ConfigError, match="avro need --schema-registry-url"):
        Settings(**BASE, value_format="avro")  # type: ignore[arg-type]
    settings = Settings(
        **BASE,  # type: ignore[arg-type]
        key_format="json-schema",
        value_format="protobuf",
        schema_registry_url="http://registry:8081",
    )
    assert settings.value_format == "protobuf"


def test_the_registry_settings_are_checked_and_the_password_never_shown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must start with http"):
        Settings(**BASE, schema_registry_url="registry:8081")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="go together"):
        Settings(**BASE, schema_registry_username="u")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no such file"):
        Settings(**BASE, schema_registry_ca_file=tmp_path / "none.pem")  # type: ignore[arg-type]
    settings = Settings(
        **BASE,  # type: ignore[arg-type]
        schema_registry_url="https://registry",
        schema_registry_username="u",
        schema_registry_password="secret-word",
    )
    assert "secret-word" not in repr(settings)
