"""Start and stop a throw-away schema registry for sqlstate's tests: Apicurio Registry, which
speaks Confluent's Schema Registry API under ``/apis/ccompat/v7``.

``register`` registers a schema through the registry's API, for the tests and the bench.

Usable as a command (``python3 -m tools.schema_registry COMMAND``, from the repository's root)
and as a module (``from tools.schema_registry import RegistryControl``). Standard library only,
like tools/kafka_broker, whose process helpers it uses.

Commands:
    up       make sure a registry answers at SCHEMA_REGISTRY_URL; start one if nothing does
    down     stop the registry this harness started and delete its data
    status   say what answers at SCHEMA_REGISTRY_URL (exit 0: a registry, 3: nothing,
             1: another program)
    stop     stop our registry (SIGTERM), keeping its data
    start    start our stopped registry again on the same data
    run      run a command with a registry: start one if none answers, export
             SCHEMA_REGISTRY_URL, run the command, stop what was started (even on failure)
             and exit with the command's status

Maven fetches Apicurio Registry's ready-built distribution once
(``io.apicurio:apicurio-registry-app:<VERSION>:tar.gz:all`` from Maven Central) and it is
unpacked into .cache/apicurio-registry-<VERSION>/; a JVM (Java 17+) runs its runner jar with
its data in an H2 file under .run/schema-registry/, so that ``stop`` and ``start`` keep the
schemas, as a broker keeps its log. What the harness started is recorded in
.run/schema-registry/state.json; a process is only signalled by that pid, after checking
that it still runs our registry.

Environment:
    SCHEMA_REGISTRY_URL       the registry's API (default http://127.0.0.1:8081/apis/ccompat/v7)
    SCHEMA_REGISTRY_RUN_DIR   where our registry keeps its files (default .run/schema-registry/)
    JAVA, MVN                 the java and mvn executables (default: from PATH)
"""

from __future__ import annotations

from tools.schema_registry.control import (
    DEFAULT_URL,
    READY_TIMEOUT,
    VERSION,
    RegistryControl,
    RegistryError,
    probe,
    register,
)

__all__ = [
    "DEFAULT_URL",
    "READY_TIMEOUT",
    "VERSION",
    "RegistryControl",
    "RegistryError",
    "probe",
    "register",
]
