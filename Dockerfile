# syntax=docker/dockerfile:1
# sqlstate as a container: the daemon only, running as a non-root user, its database on a volume.
#
#   docker build -t sqlstate .
#   docker run --rm -v sqlstate-data:/data -p 9410:9410 \
#       -e SQLSTATE_BOOTSTRAP_SERVERS=kafka:9092 -e SQLSTATE_TOPIC=orders \
#       -e SQLSTATE_GROUP_ID=orders-counts sqlstate
#
# Every `sqlstate run` flag is also a SQLSTATE_* variable (see docs/operations.md). Secrets go in
# SQLSTATE_SASL_PASSWORD / SQLSTATE_SSL_PASSWORD, never in flags.

# Build stage: a wheel of sqlstate and of everything it needs. aiokafka publishes manylinux wheels
# with its C record parser, so no compiler is needed here either.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY migrations/ migrations/
COPY sqlstate/ sqlstate/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Run stage: the wheels installed, nothing else from the build.
FROM python:3.11-slim
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels sqlstate \
    && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home sqlstate \
    && mkdir /data && chown sqlstate:sqlstate /data

# The database, its -wal and -shm files live together on this volume. Keep it on a local disk:
# SQLite must not run on a network filesystem.
VOLUME /data
WORKDIR /data
ENV SQLSTATE_DATABASE=/data/sqlstate.db \
    SQLSTATE_METRICS_PORT=9410 \
    SQLSTATE_METRICS_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 9410
USER sqlstate

# /healthz: 200 while in the group and caught up or making progress (docs/operations.md). The
# start period covers joining the group; a stall is reported by the daemon after --stall-timeout.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['SQLSTATE_METRICS_PORT'], timeout=4)"]

# The daemon is PID 1 and handles SIGTERM itself: it commits the batch in flight and leaves the
# group. Give it time to do so: `docker stop --time 30`, or stop_grace_period in compose.
ENTRYPOINT ["sqlstate"]
CMD ["run"]
