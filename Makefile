# Developer tasks for sqlstate. `make` runs lint, typecheck and test.
#
# `make test` needs a Kafka broker: it uses the one answering at KAFKA_BOOTSTRAP
# (default 127.0.0.1:9092) or, when nothing answers, starts a throw-away broker for the
# run and stops it afterwards, also when the tests fail (tools/kafka_broker/).
# The Kafka version is pinned in broker/VERSION only. It also needs a schema registry at
# SCHEMA_REGISTRY_URL (default http://127.0.0.1:8081/apis/ccompat/v7), started the same way
# when nothing answers there (tools/schema_registry/).
#
# Another Python: `PYTHON=python3.13 make test` (any target) works in a venv of its own,
# .venv-python3.13, so the default .venv (python3) stays as it is.

SHELL := /bin/bash
.DEFAULT_GOAL := all
.DELETE_ON_ERROR:

PYTHON ?= python3
# The default interpreter keeps .venv; any other gets a venv named after it.
VENV := $(if $(filter python3,$(PYTHON)),.venv,.venv-$(notdir $(PYTHON)))
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# The broker tool is standard library only, so it runs before the venv exists.
BROKER := $(PYTHON) -m tools.kafka_broker
# So is the schema registry's (Apicurio Registry, fetched with Maven into .cache/), which
# `make test` and `make bench` run inside the broker's: a registry that cannot start fails them.
REGISTRY := $(PYTHON) -m tools.schema_registry
# Where the code lives; bench/ joins once it exists.
PACKAGES := sqlstate tests tools $(wildcard bench) $(wildcard examples)
PYTEST_ARGS ?=

export KAFKA_BOOTSTRAP ?= 127.0.0.1:9092
export KAFKA_VERSION := $(shell cat broker/VERSION)
export SCHEMA_REGISTRY_URL ?= http://127.0.0.1:8081/apis/ccompat/v7

.PHONY: all install lint format typecheck test soak soak-short soak-multihost bench demo broker-up \
	broker-down broker-status broker-logs clean distclean

all: lint typecheck test

## install: create the venv (.venv, or .venv-<python> for another PYTHON) and install
## sqlstate with its test extras (again when pyproject.toml changes)
install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

lint: install
	$(BIN)/ruff check $(PACKAGES)
	$(BIN)/ruff format --check $(PACKAGES)
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format $(PACKAGES)
	$(BIN)/ruff check --fix $(PACKAGES)

typecheck: install
	$(BIN)/mypy $(PACKAGES)

## test: every test in tests/ (and examples/), against a real broker, in TEST_WORKERS pytest-xdist workers
## (most tests wait on Kafka; those that stop the broker run alone: tests/conftest.py).
## TEST_WORKERS=0 runs them in one process. pytest's own exit status is make's: 5 (no
## tests collected) fails like any other.
TEST_WORKERS ?= 4
test: install
	$(BROKER) run -- $(REGISTRY) run -- $(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

## soak: DURATION seconds (default 600) of daemon kills, pauses and broker bounces under
## steady traffic, then the exactly-once oracle; prints a summary (tests/soak/soak.py).
## It kills and restarts the broker, so it needs one this harness starts.
# soak-multihost's own default, taken before DURATION gets the soak's.
MULTIHOST_DURATION := $(if $(filter undefined,$(origin DURATION)),120,$(DURATION))
DURATION ?= 600
SOAK_ARGS ?=
soak: install
	$(BROKER) run -- $(BIN)/python -m tests.soak --duration $(DURATION) $(SOAK_ARGS)

## soak-short: the two-minute soak that .ci/run runs after the tests
soak-short: install
	$(BROKER) run -- $(BIN)/python -m tests.soak --duration 120 $(SOAK_ARGS)

## soak-multihost: the soak with three hosts simulated here, each a daemon with a database file
## of its own under --changelog, and the same faults plus network partitions: the broker and
## each host in a network namespace of its own (root and `ip netns` needed; the soak starts its
## broker there, on KAFKA_BOOTSTRAP's port); every file must end with the complete state and no
## snapshot may show half a batch. DURATION defaults to 120 for it. NETNS=0: no namespaces and
## no partitions, on the usual broker, for machines without them.
NETNS ?= 1
soak-multihost: install
ifeq ($(NETNS),0)
	$(BROKER) run -- $(BIN)/python -m tests.soak --hosts 3 --no-netns --duration $(MULTIHOST_DURATION) $(SOAK_ARGS)
else
	$(BIN)/python -m tests.soak --hosts 3 --netns --duration $(MULTIHOST_DURATION) $(SOAK_ARGS)
endif

## bench: produce 1,000,000 messages once, then measure a bare aiokafka consumer, sqlstate,
## two sqlstate processes and sqlstate on a database already holding 1,000,000 and 10,000,000
## keys (whose first batch is the restart time), on the broker `make test` would use. Prints a table and writes
## bench-results.json. Also --changelog: one process, two processes on two files (with the
## standby lag), and the restore of a changelog partition of 1,000,000 keys (about 2 minutes;
## --restore-keys 0 skips it). Options: make bench BENCH_ARGS="--zipf 1.1 --big-state 10000000"
## (see python -m bench.run --help). `make test` runs only a 3,000-message smoke of it.
## Also (g') the SQL processor on the same orders as Avro values, against a schema registry
## started for it (BENCH_ARGS=--no-avro skips that run).
## Then a rolling restart of 3 --changelog hosts under load: each partition's stall per
## rebalance, moved and stayed (about a minute; BENCH_ARGS=--no-rebalance skips it).
BENCH_ARGS ?=
bench: install
	$(BROKER) run -- $(REGISTRY) run -- $(BIN)/python -m bench.run --json bench-results.json $(BENCH_ARGS)

## demo: the README's first run: a broker, topic `test`, keyed messages, the daemon until
## it has caught up, then the top counts through the sqlite3 tool. Another topic:
## make demo DEMO_ARGS="--topic clicks" (see python tools/demo.py --help)
DEMO_ARGS ?=
demo: install
	$(BROKER) run -- $(BIN)/python tools/demo.py $(DEMO_ARGS)

broker-up:
	$(BROKER) up

broker-down:
	$(BROKER) down

broker-status:
	$(BROKER) status

broker-logs:
	$(BROKER) logs

## clean: stop our broker first, so that deleting .run/ never orphans a running one
clean: broker-down
	rm -rf .run .mypy_cache .ruff_cache .pytest_cache build dist
	find . -name __pycache__ -type d -not -path './.venv*' -prune -exec rm -rf {} +

## distclean: also the venvs (every Python's) and the cached broker jars
distclean: clean
	rm -rf .venv .venv-* .cache
