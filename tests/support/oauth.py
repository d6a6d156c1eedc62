"""OAuth for the tests: unsecured JWTs that Kafka's unsecured validator accepts, a script that
prints them (for ``--oauth-token-command``), and a small OAuth token endpoint on the loopback.

Kafka's unsecured validator (the test broker's OAUTHBEARER listener, broker/server.properties)
accepts a JWS with the header ``{"alg": "none"}``, an empty signature, a ``sub`` claim (the
principal) and an ``exp`` claim in the future. Times are relative to now.
"""

from __future__ import annotations

import base64
import json
import secrets
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

SUBJECT = "sqlstate-oauth-test"


def _part(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def unsecured_jwt(subject: str = SUBJECT, lifetime_s: float | None = 3600) -> str:
    """An unsigned JWT for ``subject``, expiring ``lifetime_s`` from now (None: no ``exp``).

    A random ``jti`` makes every token distinct, so a test can look for each one in a log.
    """
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "iat": now, "jti": secrets.token_hex(8)}
    if lifetime_s is not None:
        claims["exp"] = now + lifetime_s
    return f"{_part({'alg': 'none'})}.{_part(claims)}."


_MINT = """\
import sys
sys.path.insert(0, {root!r})
from tests.support.oauth import unsecured_jwt
token = unsecured_jwt(lifetime_s=float(sys.argv[1]))
with open(sys.argv[2], "a") as issued:
    issued.write(token + "\\n")
print(token)
"""


def token_command(directory: Path, lifetime_s: float) -> tuple[str, Path]:
    """A shell command that prints a new token valid for ``lifetime_s`` each time it runs, and
    the file where it writes down every token it printed."""
    script = directory / "mint_token.py"
    issued = directory / "issued_tokens"
    script.write_text(_MINT.format(root=str(Path(__file__).resolve().parents[2])))
    return f"{sys.executable} {script} {lifetime_s:g} {issued}", issued


def issued_tokens(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


class TokenEndpoint:
    """An OAuth 2.0 token endpoint for one client (client credentials grant, HTTP Basic client
    authentication) issuing unsecured JWTs; a context manager that serves on a free port."""

    def __init__(self, client_id: str, client_secret: str, lifetime_s: float = 3600) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.lifetime_s = lifetime_s
        self.issued: list[str] = []
        self.scopes: list[str | None] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                status, answer = endpoint.grant(self.headers.get("Authorization", ""), form)
                body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the test's output is for the test

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/oauth2/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def grant(self, authorization: str, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if authorization != f"Basic {expected}":
            return 401, {
                "error": "invalid_client",
                "error_description": "client authentication failed",
            }
        if form.get("grant_type") != ["client_credentials"]:
            return 400, {"error": "unsupported_grant_type"}
        self.scopes.append(form["scope"][0] if "scope" in form else None)
        token = unsecured_jwt(lifetime_s=self.lifetime_s)
        self.issued.append(token)
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime_s}

    def __enter__(self) -> TokenEndpoint:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
