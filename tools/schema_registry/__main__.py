"""The command line: ``python3 -m tools.schema_registry COMMAND`` (the package docstring says
what each command does)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

from tools.kafka_broker.__main__ import _signals_forwarded_to
from tools.schema_registry.control import RegistryControl, RegistryError, probe, say


def run_with_registry(control: RegistryControl, command: Sequence[str]) -> int:
    """Run ``command`` with a registry; stop the registry afterwards if we started it."""
    started = control.up()
    environment = dict(os.environ, SCHEMA_REGISTRY_URL=control.url)
    try:
        child = subprocess.Popen(list(command), env=environment)
        with _signals_forwarded_to(child):
            returncode = child.wait()
    finally:
        if started:
            control.down()
    return 128 - returncode if returncode < 0 else returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m tools.schema_registry",
        description="Run a throw-away schema registry (Apicurio Registry) for sqlstate's tests.",
        epilog="SCHEMA_REGISTRY_URL (default http://127.0.0.1:8081/apis/ccompat/v7) says where.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start a registry unless one answers already")
    commands.add_parser("down", help="stop our registry and delete its data")
    commands.add_parser("status", help="what answers at SCHEMA_REGISTRY_URL")
    commands.add_parser("stop", help="stop our registry, keeping its data")
    commands.add_parser("start", help="start our registry again on its data")
    run = commands.add_parser("run", help="run a command with a registry, e.g. run -- pytest")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    arguments = parser.parse_args(argv)

    control = RegistryControl()
    try:
        if arguments.command == "up":
            control.up()
        elif arguments.command == "down":
            control.down()
        elif arguments.command == "status":
            state, detail = probe(control.url)
            whose = "ours" if control.owned() else "not started by this harness"
            say(f"{control.url}: {state}, {detail} ({whose})")
            return {"ready": 0, "closed": 3}.get(state, 1)
        elif arguments.command == "stop":
            control.stop()
        elif arguments.command == "start":
            control.start()
        elif arguments.command == "run":
            command = arguments.argv[1:] if arguments.argv[:1] == ["--"] else arguments.argv
            if not command:
                parser.error("run needs a command, e.g. run -- pytest")
            return run_with_registry(control, command)
    except RegistryError as error:
        print(f"schema_registry: error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
