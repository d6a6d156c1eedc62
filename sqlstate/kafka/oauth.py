"""OAUTHBEARER tokens for every Kafka client sqlstate builds, from one of three sources.

- ``--oauth-token-command``: a shell command whose standard output is the token;
- ``--oauth-token-file``: a file holding the token, read again whenever it changes;
- ``--oauth-token-endpoint``: an OAuth 2.0 token endpoint, asked with the client credentials
  grant (RFC 6749 4.4): the client id and secret in HTTP Basic authentication, and the scope.

aiokafka asks its token provider for a token once for every connection it opens (its
OAUTHBEARER login sends one and never logs in again on the same connection). A broker with
re-authentication on (``connections.max.reauth.ms``) closes a connection when its token expires,
and aiokafka then connects again, asking for a token again. So a token is fetched again once
half of its lifetime has passed: every connection starts with at least half a lifetime ahead.
The lifetime is the token's ``exp`` claim when it is a JWT, and for the endpoint also its
``expires_in``, whichever ends first; a token with neither is used for ``UNKNOWN_LIFETIME_S``
(or, from a file, until the file changes).

One provider per set of security settings serves every client of the process, so that a token
is fetched once for all of them. A failure to fetch a token is a ``TokenError``, a ``KafkaError``:
aiokafka takes it like a connection that failed, logs it and tries again later, as for an
unreachable broker; meanwhile a token that has not expired yet is still handed out. At start,
``TokenError.retriable`` says whether waiting can help (an endpoint that does not answer) or
not (a command that fails, a missing file, an endpoint that refuses the client).

The token and the client secret are never logged and never part of an error's message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.abc import AbstractTokenProvider
from aiokafka.errors import KafkaError

from sqlstate.observe.logs import LogEvent, rounded
from sqlstate.settings import Security

logger = logging.getLogger("sqlstate.oauth")  # its documented name
_OBTAINED = LogEvent(
    logger,
    logging.INFO,
    "oauth_token_obtained",
    "OAuth token obtained from %(source)s, %(_validity)s",
    data={"valid_s": rounded(0)},
    words=lambda fields: {
        "_validity": "with no known expiry"
        if fields["valid_s"] is None
        else f"valid for {fields['valid_s']:.0f}s"
    },
)
_REFRESH_FAILED = LogEvent(
    logger,
    logging.WARNING,
    "oauth_token_refresh_failed",
    "could not get a new OAuth token from %(source)s: %(reason)s; the current one is used"
    " until it expires in %(expires_in_s).0fs",
    data={"expires_in_s": rounded(0)},
)

# How long a token is used when nothing says when it expires (not a JWT with "exp", and no
# "expires_in"): fetched again after this many seconds.
UNKNOWN_LIFETIME_S = 300.0
# After a failed fetch, the pause before the source is asked again: doubled at each failure.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0
# A source that takes longer than this to give a token has failed (and is asked again later).
SOURCE_TIMEOUT_S = 30.0
# RFC 6750's b64token: what a bearer token may hold. Anything else (a space, a second line)
# would break the OAUTHBEARER message that carries it.
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# How much of what a failing source said goes into an error: enough to read, never a dump.
_SAID_CHARS = 300


class TokenError(KafkaError):  # type: ignore[misc]
    """No OAuth token could be obtained. ``retriable``: whether asking again later may help."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Token:
    """A token and when it stops being valid (seconds since the epoch; None: not known)."""

    value: str = field(repr=False)
    obtained_at: float
    expires_at: float | None

    @property
    def lifetime_s(self) -> float:
        if self.expires_at is None:
            return UNKNOWN_LIFETIME_S
        return self.expires_at - self.obtained_at

    def due(self, now: float) -> bool:
        """Whether to fetch a new one: half of its lifetime has passed."""
        return now >= self.obtained_at + self.lifetime_s / 2

    def expired(self, now: float) -> bool:
        return now >= self.obtained_at + self.lifetime_s


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (seconds since the epoch); None when the token is not a JWT
    or has no ``exp``. The signature is not checked: the broker does that."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


def bearer_token(text: str, source: str) -> str:
    """``text`` without surrounding white space, checked to be one bearer token."""
    token = text.strip()
    if not token:
        raise TokenError(f"{source} gave no token (an empty output)", retriable=False)
    if not _BEARER_TOKEN.fullmatch(token):
        raise TokenError(
            f"{source} gave {len(token)} characters that are not one bearer token (RFC 6750:"
            " letters, digits and -._~+/ only, one line)",
            retriable=False,
        )
    return token


def _token(value: str, expires_in_s: float | None = None) -> Token:
    now = time.time()
    ends = [end for end in (jwt_expiry(value), expires_in_s and now + expires_in_s) if end]
    return Token(value, now, min(ends) if ends else None)


def _said(text: str) -> str:
    """The last line of what a failing source said, shortened."""
    lines = text.strip().splitlines()
    return lines[-1][:_SAID_CHARS] if lines else ""


class CommandSource:
    """``--oauth-token-command``: a shell command whose standard output is the token."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.name = "--oauth-token-command"

    def stale(self, token: Token) -> bool:
        return False

    async def fetch(self) -> Token:
        process = await asyncio.create_subprocess_shell(
            self.command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), SOURCE_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise TokenError(
                f"{self.name} gave no token within {SOURCE_TIMEOUT_S:g}s", retriable=True
            ) from None
        if process.returncode != 0:
            said = _said(err.decode(errors="replace"))
            raise TokenError(
                f"{self.name} exited with status {process.returncode}"
                + (f": {said}" if said else ""),
                retriable=False,
            )
        return _token(bearer_token(out.decode(errors="replace"), self.name))


class FileSource:
    """``--oauth-token-file``: the token in a file, read again whenever the file changes (a
    sidecar or a projected volume writes a new one before the old one expires)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"--oauth-token-file {path}"
        self._read_version: tuple[int, int, int] | None = None

    def _version(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def stale(self, token: Token) -> bool:
        return self._version() != self._read_version

    async def fetch(self) -> Token:
        version = self._version()
        try:
            text = await asyncio.to_thread(self.path.read_text, errors="replace")
        except FileNotFoundError:
            raise TokenError(f"{self.name}: no such file", retriable=False) from None
        except OSError as error:
            raise TokenError(f"{self.name}: {error.strerror}", retriable=False) from None
        token = _token(bearer_token(text, self.name))
        self._read_version = version
        return token


class EndpointSource:
    """``--oauth-token-endpoint``: the OAuth 2.0 client credentials grant."""

    def __init__(self, url: str, client_id: str, client_secret: str, scope: str | None) -> None:
        self.url = url
        self.name = f"the token endpoint {url}"
        form = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
        self._body = urllib.parse.urlencode(form).encode()
        credentials = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        self._headers = {
            "Authorization": f"Basic {credentials}",
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }

    def __repr__(self) -> str:
        return f"EndpointSource({self.url!r})"

    def stale(self, token: Token) -> bool:
        return False

    async def fetch(self) -> Token:
        try:
            status, body = await asyncio.to_thread(self._post)
        except (OSError, TimeoutError) as error:  # URLError is an OSError
            reason = getattr(error, "reason", None) or error
            raise TokenError(f"{self.name} cannot be reached: {reason}", retriable=True) from None
        answer = _json_object(body)
        if status != 200:
            said = " ".join(
                str(answer[key]) for key in ("error", "error_description") if key in answer
            )
            raise TokenError(
                f"{self.name} answered HTTP {status}" + (f": {said[:_SAID_CHARS]}" if said else ""),
                # Refused (a wrong client id or secret, an unknown scope): asking again will not
                # help. Busy or broken: it may.
                retriable=status == 429 or status >= 500,
            )
        value = answer.get("access_token")
        if not isinstance(value, str):
            raise TokenError(f"{self.name} answered without an access_token", retriable=False)
        expires_in = answer.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else None
        return _token(bearer_token(value, self.name), lifetime)

    def _post(self) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url, self._body, self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=SOURCE_TIMEOUT_S) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read()


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(body)
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


Source = CommandSource | FileSource | EndpointSource


class TokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """aiokafka's token provider: the cached token, or a new one when it is due.

    After a failed fetch the source is not asked again before a pause, which doubles with each
    failure up to ``RETRY_MAX_S``: aiokafka tries to connect again every 100 ms or so, and each
    try must not run the command or call the endpoint again. Meanwhile a try gets the last
    error again (or the current token while it is valid).
    """

    def __init__(self, source: Source) -> None:
        self.source = source
        self._token: Token | None = None
        self._failure: TokenError | None = None
        self._retry_s = 0.0
        self._retry_at = 0.0  # time.monotonic()
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def _locked(self) -> asyncio.Lock:
        # One fetch at a time: the connections aiokafka opens together wait for it. An asyncio
        # lock belongs to one event loop, and the provider outlives a loop in tests.
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def token(self) -> str:
        async with self._locked():
            now = time.time()
            current = self._token
            usable = current is not None and not current.expired(now)
            if current is not None and not current.due(now) and not self.source.stale(current):
                return current.value
            if self._failure is not None and time.monotonic() < self._retry_at:
                if current is not None and usable:
                    return current.value
                raise TokenError(str(self._failure), retriable=self._failure.retriable)
            try:
                fresh = await self.source.fetch()
            except TokenError as error:
                self._failure = error
                self._retry_s = min(RETRY_MAX_S, max(RETRY_FIRST_S, self._retry_s * 2))
                self._retry_at = time.monotonic() + self._retry_s
                if current is None or not usable:
                    raise
                _REFRESH_FAILED.log(
                    source=self.source.name,
                    reason=str(error),
                    expires_in_s=current.obtained_at + current.lifetime_s - now,
                )
                return current.value
            self._token, self._failure, self._retry_s = fresh, None, 0.0
            _OBTAINED.log(
                source=self.source.name,
                valid_s=fresh.lifetime_s if fresh.expires_at is not None else None,
            )
            return fresh.value


def source_of(security: Security) -> Source:
    """The token source that ``security`` names (validated: exactly one is given)."""
    if security.oauth_token_command:
        return CommandSource(security.oauth_token_command)
    if security.oauth_token_file:
        return FileSource(security.oauth_token_file)
    if security.oauth_token_endpoint and security.oauth_client_id and security.oauth_client_secret:
        return EndpointSource(
            security.oauth_token_endpoint,
            security.oauth_client_id,
            security.oauth_client_secret,
            security.oauth_scope,
        )
    raise ValueError("OAUTHBEARER settings without a token source")


_providers: dict[Security, TokenProvider] = {}


def provider_for(security: Security) -> TokenProvider:
    """The process's one token provider for ``security``."""
    provider = _providers.get(security)
    if provider is None:
        provider = _providers[security] = TokenProvider(source_of(security))
    return provider
