"""OAUTHBEARER token sources, their cache and the settings that choose them (no broker).

The endpoint is a small OAuth token endpoint on the loopback (tests/support/oauth.py).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sqlstate.errors import ConfigError
from sqlstate.kafka.oauth import (
    CommandSource,
    EndpointSource,
    FileSource,
    Token,
    TokenError,
    TokenProvider,
    bearer_token,
    jwt_expiry,
)
from sqlstate.settings import Security
from tests.support.oauth import TokenEndpoint, unsecured_jwt

OAUTH: dict[str, Any] = {"protocol": "SASL_PLAINTEXT", "sasl_mechanism": "OAUTHBEARER"}


def test_the_expiry_is_the_jwt_exp_claim() -> None:
    token = unsecured_jwt("someone", lifetime_s=60)
    expiry = jwt_expiry(token)
    assert expiry is not None
    assert abs(expiry - (time.time() + 60)) < 5
    assert jwt_expiry("opaque-token") is None
    assert jwt_expiry("a.b.c") is None  # not base64 JSON
    assert jwt_expiry(unsecured_jwt("someone", lifetime_s=None)) is None  # no exp


def test_a_token_is_one_bearer_token_without_surrounding_space() -> None:
    assert bearer_token("  abc.DEF-_~+/==\n", "src") == "abc.DEF-_~+/=="
    with pytest.raises(TokenError, match="gave no token") as empty:
        bearer_token("\n", "src")
    assert not empty.value.retriable
    with pytest.raises(TokenError, match="11 characters that are not one bearer token") as bad:
        bearer_token("two\nsecrets", "src")
    assert "secrets" not in str(bad.value)


def test_a_token_is_due_after_half_its_lifetime() -> None:
    token = Token("t", obtained_at=1000.0, expires_at=1010.0)
    assert not token.due(1004.9)
    assert token.due(1005.0)
    assert not token.expired(1009.9)
    assert token.expired(1010.0)
    assert "'t'" not in repr(token)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({}, "OAUTHBEARER needs exactly one of --oauth-token-command"),
        (
            {"oauth_token_command": "x", "oauth_token_file": Path("f")},
            "not --oauth-token-command and --oauth-token-file",
        ),
        (
            {"oauth_token_endpoint": "https://idp/token", "oauth_client_id": "id"},
            "needs --oauth-client-id and the secret in SQLSTATE_OAUTH_CLIENT_SECRET",
        ),
        (
            {
                "oauth_token_endpoint": "ftp://idp",
                "oauth_client_id": "i",
                "oauth_client_secret": "s",
            },
            "must be an http:// or https:// URL",
        ),
        ({"oauth_token_command": "x", "oauth_scope": "s"}, "need --oauth-token-endpoint"),
    ],
)
def test_oauthbearer_needs_exactly_one_complete_token_source(
    fields: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        Security(**OAUTH, **fields).validated()


def test_a_token_source_without_oauthbearer_is_refused() -> None:
    with pytest.raises(ConfigError, match="--oauth-token-file needs --sasl-mechanism OAUTHBEARER"):
        Security(oauth_token_file=Path("token")).validated()


def test_the_client_secret_is_not_in_the_settings_repr() -> None:
    security = Security(
        **OAUTH,
        oauth_token_endpoint="https://idp/token",
        oauth_client_id="sqlstate",
        oauth_client_secret="client-secret-4d2e",
    ).validated()
    assert "client-secret-4d2e" not in repr(security)
    assert "client-secret-4d2e" not in repr(EndpointSource("https://idp/t", "id", "s3cr3t", None))


class FakeSource:
    """A source that hands out the tokens it is given, or raises."""

    name = "fake"

    def __init__(self) -> None:
        self.fetches = 0
        self.lifetime_s: float | None = 10.0
        self.failure: TokenError | None = None

    def stale(self, token: Token) -> bool:
        return False

    async def fetch(self) -> Token:
        self.fetches += 1
        if self.failure:
            raise self.failure
        now = time.time()
        expires = None if self.lifetime_s is None else now + self.lifetime_s
        return Token(f"token-{self.fetches}", now, expires)


async def test_the_provider_reuses_a_token_until_half_its_lifetime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = FakeSource()
    provider = TokenProvider(source)  # type: ignore[arg-type]
    now = time.time()
    assert await provider.token() == "token-1"
    monkeypatch.setattr(time, "time", lambda: now + 4)
    assert await provider.token() == "token-1"
    monkeypatch.setattr(time, "time", lambda: now + 6)
    assert await provider.token() == "token-2"
    assert source.fetches == 2


async def test_a_failed_refresh_keeps_the_token_until_it_expires(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    source = FakeSource()
    provider = TokenProvider(source)  # type: ignore[arg-type]
    now = time.time()
    assert await provider.token() == "token-1"
    source.failure = TokenError("the endpoint is down", retriable=True)
    monkeypatch.setattr(time, "time", lambda: now + 6)
    assert await provider.token() == "token-1"
    assert "could not get a new OAuth token from fake: the endpoint is down" in caplog.text
    monkeypatch.setattr(time, "time", lambda: now + 11)
    with pytest.raises(TokenError, match="the endpoint is down"):
        await provider.token()
    assert "token-1" not in caplog.text


async def test_a_failing_source_is_asked_again_only_after_a_growing_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiokafka tries to connect every 100 ms or so; the source is not asked each time."""
    source = FakeSource()
    source.failure = TokenError("the endpoint is down", retriable=True)
    provider = TokenProvider(source)  # type: ignore[arg-type]
    clock = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: clock)
    for _ in range(3):
        with pytest.raises(TokenError, match="the endpoint is down") as failed:
            await provider.token()
        assert failed.value.retriable
    assert source.fetches == 1
    clock += 0.6  # past the first pause (0.5 s); the next one is 1 s
    with pytest.raises(TokenError):
        await provider.token()
    clock += 0.6
    with pytest.raises(TokenError):
        await provider.token()
    assert source.fetches == 2
    source.failure = None
    clock += 0.6
    assert await provider.token() == "token-3"


async def test_the_command_source_runs_the_command_each_time(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    command = f"echo run >> {counter}; {sys.executable} -c \"print('abc.def.')\""
    source = CommandSource(command)
    assert (await source.fetch()).value == "abc.def."
    assert (await source.fetch()).value == "abc.def."
    assert counter.read_text().count("run") == 2


async def test_a_failing_command_says_its_status_and_last_line() -> None:
    source = CommandSource("echo first >&2; echo 'no credentials' >&2; exit 3")
    with pytest.raises(TokenError) as failed:
        await source.fetch()
    assert str(failed.value) == "--oauth-token-command exited with status 3: no credentials"
    assert not failed.value.retriable


async def test_the_file_source_reads_the_file_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first-token\n")
    source = FileSource(path)
    provider = TokenProvider(source)
    assert await provider.token() == "first-token"
    assert await provider.token() == "first-token"
    path.write_text("second-token-longer\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert await provider.token() == "second-token-longer"
    path.unlink()
    with pytest.raises(TokenError, match=f"--oauth-token-file {path}: no such file") as missing:
        await FileSource(path).fetch()
    assert not missing.value.retriable


async def test_the_endpoint_grants_client_credentials() -> None:
    with TokenEndpoint(client_id="sqlstate", client_secret="s3cr3t", lifetime_s=60) as endpoint:
        source = EndpointSource(endpoint.url, "sqlstate", "s3cr3t", "kafka")
        token = await source.fetch()
    assert token.value == endpoint.issued[-1]
    assert endpoint.scopes == ["kafka"]
    assert token.expires_at is not None
    assert abs(token.expires_at - (time.time() + 60)) < 5


async def test_an_endpoint_that_refuses_the_client_is_a_clear_lasting_error() -> None:
    with (
        TokenEndpoint(client_id="sqlstate", client_secret="s3cr3t") as endpoint,
        pytest.raises(TokenError) as refused,
    ):
        await EndpointSource(endpoint.url, "sqlstate", "wrong", None).fetch()
    assert str(refused.value) == (
        f"the token endpoint {endpoint.url} answered HTTP 401: invalid_client"
        " client authentication failed"
    )
    assert not refused.value.retriable
    assert "wrong" not in str(refused.value)


async def test_an_unreachable_endpoint_is_retriable() -> None:
    with TokenEndpoint(client_id="a", client_secret="b") as endpoint:
        url = endpoint.url
    with pytest.raises(TokenError, match="cannot be reached") as unreachable:
        await EndpointSource(url, "a", "b", None).fetch()
    assert unreachable.value.retriable
