"""The command line: ``python3 -m tools.kafka_broker COMMAND`` (``--help`` lists the commands;
the package docstring says what each does)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tools.kafka_broker.control import BrokerControl, say
from tools.kafka_broker.errors import BrokerError
from tools.kafka_broker.processes import LOG_TAIL_LINES
from tools.kafka_broker.protocol import probe


def run_with_broker(control: BrokerControl, command: Sequence[str]) -> int:
    """Run ``command`` against a broker; stop the broker afterwards if we started it."""
    started = control.up()
    environment = dict(os.environ, KAFKA_BOOTSTRAP=control.bootstrap)
    try:
        # Ctrl-C reaches the command directly (same process group); we stay alive to
        # clean up after it. SIGTERM is meant for us, so we hand it on.
        child = subprocess.Popen(list(command), env=environment)
        with _signals_forwarded_to(child):
            returncode = child.wait()
    finally:
        if started:
            control.down()
    return 128 - returncode if returncode < 0 else returncode


@contextlib.contextmanager
def _signals_forwarded_to(child: subprocess.Popen[bytes]) -> Iterator[None]:
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, lambda number, _frame: child.send_signal(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def follow(path: Path) -> None:
    """Print a file as it grows, like ``tail -f``, until Ctrl-C."""
    with contextlib.suppress(KeyboardInterrupt), path.open() as file:
        file.seek(0, os.SEEK_END)
        while True:
            line = file.readline()
            if line:
                print(line, end="", flush=True)
            else:
                time.sleep(0.3)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m tools.kafka_broker",
        description="Run a throw-away Kafka broker for sqlstate's tests.",
        epilog="KAFKA_BOOTSTRAP (default 127.0.0.1:9092) says where the broker listens.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start a broker unless one answers already")
    commands.add_parser("down", help="stop our broker and delete its data")
    commands.add_parser("status", help="what answers at KAFKA_BOOTSTRAP")
    commands.add_parser("stop", help="stop our broker gracefully, keeping its data")
    commands.add_parser("kill", help="kill -9 our broker, keeping its data")
    commands.add_parser("start", help="start our broker again on its data")
    logs = commands.add_parser("logs", help="print the tail of our broker's log")
    logs.add_argument("-n", "--lines", type=int, default=LOG_TAIL_LINES)
    logs.add_argument("-f", "--follow", action="store_true")
    run = commands.add_parser("run", help="run a command with a broker, e.g. run -- pytest")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    arguments = parser.parse_args(argv)

    control = BrokerControl()
    try:
        if arguments.command == "up":
            control.up()
        elif arguments.command == "down":
            control.down()
        elif arguments.command == "status":
            return status(control)
        elif arguments.command == "stop":
            control.stop()
        elif arguments.command == "kill":
            control.kill()
        elif arguments.command == "start":
            control.start()
        elif arguments.command == "logs":
            print(control.log_tail(arguments.lines))
            if arguments.follow and control.load_state() is not None:
                follow(control.log_file)
        elif arguments.command == "run":
            command = arguments.argv[1:] if arguments.argv[:1] == ["--"] else arguments.argv
            if not command:
                parser.error("run needs a command, e.g. run -- pytest")
            return run_with_broker(control, command)
    except BrokerError as exc:
        print(f"kafka_broker: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def status(control: BrokerControl) -> int:
    """Print what answers at the bootstrap address; exit 0 for Kafka, 3 nothing, 1 other."""
    result = probe(control.bootstrap)
    whose = control.describe() if control.owned() else "external: not started by this harness"
    if result.state in ("ready", "starting"):
        say(f"Kafka broker {result.state} at {control.bootstrap} ({whose}; {result.detail})")
        return 0
    if result.state == "closed":
        say(f"nothing answers at {control.bootstrap} ({control.describe()})")
        return 3
    say(f"{control.bootstrap}: {result.state}, {result.detail} ({whose})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
