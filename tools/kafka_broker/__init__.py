"""Start, stop and break a throw-away Apache Kafka broker for sqlstate's tests.

Usable as a command (``python3 -m tools.kafka_broker COMMAND``, from the repository's root) and
as a module (``from tools.kafka_broker import BrokerControl``). Standard library only, so that it
runs before the virtual environment exists.

Commands:
    up       make sure a broker answers at KAFKA_BOOTSTRAP; start one if nothing does
    down     stop the broker this harness started and delete its data
    status   say what answers at KAFKA_BOOTSTRAP (exit 0: a Kafka broker, 3: nothing,
             1: another program)
    stop     stop our broker gracefully (SIGTERM), keeping its data
    kill     kill our broker with SIGKILL, keeping its data
    start    start our stopped or killed broker again on the same data
    logs     print the tail of our broker's log (-f to follow)
    run      run a command with a broker: start one if none answers, export
             KAFKA_BOOTSTRAP, run the command, stop what was started (even on failure)
             and exit with the command's status

Two ways to run the broker, chosen by ``up``:
    docker   when a Docker engine answers: ``docker compose`` with docker-compose.yml
             (the official apache/kafka image)
    native   otherwise: Maven fetches the broker's jars once into .cache/kafka-<version>/,
             and a JVM runs them from a fresh data directory under .run/kafka/
Kafka's command-line tools (kafka-tools: the consumer-group command the tests run) are not
among the broker's jars: ``BrokerControl.fetch_tool_jars`` fetches them with Maven on first
use into .cache/kafka-<version>/tools/ (broker/tools-pom.xml), whichever way the broker runs.
KAFKA_RUNNER=docker|native|auto (default auto) forces one.

The Kafka version is pinned in broker/VERSION and nowhere else. Everything the harness
started is recorded in .run/kafka/state.json, so that ``down``, ``kill`` and ``start``
act on exactly that broker: a process is only ever signalled by the pid we recorded,
after checking that the pid still runs our broker, never by name.

Ports, from the PLAINTEXT port P of KAFKA_BOOTSTRAP (what every test uses):
    P        PLAINTEXT
    P + 1    the KRaft controller (native only; KAFKA_CONTROLLER_PORT overrides it)
    P + 2    SASL_PLAINTEXT: PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512, user SASL_USERNAME;
             OAUTHBEARER with Kafka's unsecured validator (any unsigned JWT with sub and exp)
    P + 3    SSL, with a server certificate from a throw-away CA made at ``up`` in
             .run/kafka/tls/ (ca.pem; client.pem and client.key for mutual TLS)
The state file records the secure listeners, for the tests of sqlstate's security settings.
Only the native path has them: docker-compose.yml has PLAINTEXT only (see its header).

Environment:
    KAFKA_BOOTSTRAP        host:port of the broker (default 127.0.0.1:9092)
    KAFKA_CONTROLLER_PORT  KRaft controller port of a native broker (default: port + 1)
    KAFKA_RUNNER           docker, native or auto (default)
    KAFKA_RUN_DIR          where a native broker keeps its files (default .run/kafka/)
    JAVA, MVN              the java and mvn executables (default: from PATH)

Modules, one concern each:
    protocol   addresses, and the ApiVersions/Metadata probe that tells a serving broker
               from a bound port
    config     broker/server.properties filled in, SCRAM users, cluster ids
    tls        the throw-away CA and certificates of the SSL listener
    processes  pid checks, starting the JVM detached, the log's tail
    control    ``BrokerControl``: up, down, stop, kill, start; native or docker
    errors     ``BrokerError``
    __main__   the command line
"""

from __future__ import annotations

from tools.kafka_broker.config import SASL_PASSWORD, SASL_USERNAME
from tools.kafka_broker.control import DEFAULT_BOOTSTRAP, STOP_TIMEOUT, BrokerControl, State
from tools.kafka_broker.errors import BrokerError
from tools.kafka_broker.protocol import READY_TIMEOUT, probe
from tools.kafka_broker.tls import CLIENT_KEY_PASSWORD

__all__ = [
    "CLIENT_KEY_PASSWORD",
    "DEFAULT_BOOTSTRAP",
    "READY_TIMEOUT",
    "SASL_PASSWORD",
    "SASL_USERNAME",
    "STOP_TIMEOUT",
    "BrokerControl",
    "BrokerError",
    "State",
    "probe",
]
