"""The broker's configuration: broker/server.properties filled in, its SCRAM users, a cluster id,
and the names the apache/kafka image gives server properties (for docker-compose.yml).

Ports, from the PLAINTEXT port P of KAFKA_BOOTSTRAP: P + 1 the KRaft controller (native only),
P + 2 SASL_PLAINTEXT, P + 3 SSL.
"""

from __future__ import annotations

import base64
import string
import uuid
from pathlib import Path

# The secure listeners sit next to the PLAINTEXT port (see the module docstring).
SASL_PORT_OFFSET = 2
SSL_PORT_OFFSET = 3
# One user for every SASL mechanism. The password is distinctive so that a test can search
# a client's output for it; it protects nothing (a throw-away broker on the loopback).
SASL_USERNAME = "sqlstate-test"
SASL_PASSWORD = "sasl-pw-3f9a61c2e7"
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")


def read_properties(text: str) -> dict[str, str]:
    """key=value lines of a .properties file (no continuation lines: we don't write any)."""
    properties = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "!")):
            key, _, value = line.partition("=")
            properties[key.strip()] = value.strip()
    return properties


def render_server_properties(
    template: str, *, host: str, port: int, controller_port: int, log_dir: Path, tls_dir: Path
) -> str:
    """Fill in broker/server.properties; a placeholder left unfilled is an error."""
    return string.Template(template).substitute(
        host=host,
        port=port,
        controller_port=controller_port,
        sasl_port=port + SASL_PORT_OFFSET,
        ssl_port=port + SSL_PORT_OFFSET,
        log_dir=log_dir,
        tls_dir=tls_dir,
        sasl_username=SASL_USERNAME,
        sasl_password=SASL_PASSWORD,
    )


def scram_arguments() -> list[str]:
    """StorageTool ``format`` arguments that create the SCRAM user of every mechanism.

    A KRaft broker keeps SCRAM credentials in its metadata log; writing them at format time
    means no admin request (and no second JVM) after the broker has started.
    """
    arguments = []
    for mechanism in SCRAM_MECHANISMS:
        arguments += ["--add-scram", f"{mechanism}=[name={SASL_USERNAME},password={SASL_PASSWORD}]"]
    return arguments


def docker_env_name(property_name: str) -> str:
    """The apache/kafka image's environment variable for a server property.

    The image's documented rule: '_' becomes '__', '-' becomes '___', '.' becomes '_',
    upper case, prefixed with KAFKA_.
    """
    name = property_name.replace("_", "__").replace("-", "___").replace(".", "_")
    return "KAFKA_" + name.upper()


def new_cluster_id() -> str:
    """A KRaft cluster id, as ``kafka-storage.sh random-uuid`` makes one.

    That is a random UUID, URL-safe base64 without padding. Kafka never hands out ids
    starting with '-' (they would read as a command-line option), so neither do we.
    Making it here saves starting a JVM just for this.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
