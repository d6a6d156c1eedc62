"""TLS material for the broker's SSL listener: a throw-away CA, a broker and a client certificate.

Made with the openssl command at ``up``, so the harness needs no Python package for it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tools.kafka_broker.errors import BrokerError

# The client key for mutual TLS is encrypted, so that the key password path is tested too.
CLIENT_KEY_PASSWORD = "client-key-pw-8d41b0"
TLS_DAYS = 7


def make_tls_files(directory: Path, host: str) -> None:
    """A throw-away CA, a broker certificate for ``host`` and a client certificate, as PEM.

    ca.pem: what clients trust; broker.pem: the broker's key and certificate chain (Kafka's
    PEM keystore wants an unencrypted PKCS#8 key when no key password is set); client.pem and
    client.key (encrypted with CLIENT_KEY_PASSWORD): a client identity for mutual TLS.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise BrokerError("openssl not found: it makes the test broker's TLS certificates")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    # Clients check the broker's address against the certificate, so name every spelling.
    names = {"DNS:localhost", "IP:127.0.0.1"}
    names.add(f"IP:{host}" if host.replace(".", "").isdigit() or ":" in host else f"DNS:{host}")
    (directory / "broker.ext").write_text(f"subjectAltName={','.join(sorted(names))}\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")

    def run(*arguments: str) -> None:
        result = subprocess.run(
            [openssl, *arguments], cwd=directory, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise BrokerError(f"openssl {arguments[0]} failed", result.stderr[-2000:])

    days = str(TLS_DAYS)
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        days,
        "-subj",
        "/CN=sqlstate test CA",
        # Python 3.13 verifies strictly (VERIFY_X509_STRICT): a CA without key usage is refused.
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    for name in ("broker", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN=sqlstate test {name}",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            days,
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.crt",
        )
    broker_pem = [directory / name for name in ("broker.key", "broker.crt", "ca.pem")]
    (directory / "broker.pem").write_text("".join(path.read_text() for path in broker_pem))
    (directory / "client.pem").write_text((directory / "client.crt").read_text())
    run(
        "pkcs8",
        "-topk8",
        "-in",
        "client.key",
        "-out",
        "client-encrypted.key",
        "-v2",
        "aes-256-cbc",
        "-passout",
        f"pass:{CLIENT_KEY_PASSWORD}",
    )
    (directory / "client-encrypted.key").replace(directory / "client.key")
