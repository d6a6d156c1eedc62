"""The schema registry harness (tools/schema_registry) without starting a registry: where it
looks, and what it says when nothing answers."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tools.schema_registry import RegistryControl, RegistryError, probe
from tools.schema_registry.__main__ import main


def closed_url() -> str:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
    return f"http://127.0.0.1:{port}/apis/ccompat/v7"


def test_nothing_answering_is_closed_and_never_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = closed_url()
    assert probe(url)[0] == "closed"
    control = RegistryControl(url + "/", tmp_path)
    assert (control.url, control.host) == (url, "127.0.0.1")
    assert not control.owned()
    with pytest.raises(RegistryError, match="nothing answers"):
        control.wait_ready(timeout=1)
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", url)
    monkeypatch.setenv("SCHEMA_REGISTRY_RUN_DIR", str(tmp_path))
    assert main(["status"]) == 3
    assert "closed" in capsys.readouterr().out
    main(["down"])  # nothing of ours: nothing to stop
    assert "nothing to stop" in capsys.readouterr().out
