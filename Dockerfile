# syntax=docker/dockerfile:1
# TRACEFLOW Runner image.
#
#   docker build -t traceflow-runner:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg SOURCE_URL=https://git.example/traceflow/runner .
#   docker run -p 8080:8080 -v traceflow-data:/var/lib/traceflow \
#     -e RUNNER_PROJECTS='[{"id":"web","tenant":"acme","api_key_sha256":["<sha256 hex>"]}]' \
#     traceflow-runner:0.1.0
#
# One container runs the whole embedded mode: the Runner starts its own
# redis-server (AOF, appendfsync always) under /var/lib/traceflow. Every write
# goes under that volume, so the container runs with a read-only root file system.
# tests/deploy/test_entrypoint.py runs this file's ENTRYPOINT, CMD and ENV
# against the repository; keep every path the Runner writes under /var/lib/traceflow.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv with the Runner and its dependencies ----------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler only for a dependency that has no wheel for this platform; it stays in
# this stage. Debian point releases replace package versions, so the base image tag is
# what pins them.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY runner ./runner
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-compile . \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# --- runtime: Python, redis-server, tini and the virtualenv; no compiler -----
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=https://git.traceflow.invalid/traceflow/runner
LABEL org.opencontainers.image.title="TRACEFLOW Runner" \
      org.opencontainers.image.description="On-prem ingest, PII redaction and forwarding of session recordings" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.vendor="TRACEFLOW" \
      org.opencontainers.image.licenses="Proprietary"

# redis-server for the embedded mode; tini as PID 1 forwards SIGTERM to the Runner and
# reaps any orphan. Versions are pinned by the base image tag (see the build stage).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 traceflow \
 && useradd --system --uid 10001 --gid traceflow --no-create-home \
      --home-dir /var/lib/traceflow --shell /usr/sbin/nologin traceflow \
 && install -d -o traceflow -g traceflow -m 0750 /var/lib/traceflow /var/lib/traceflow/tmp

COPY --from=build /opt/venv /opt/venv
COPY deploy/container/runner.toml /etc/traceflow/runner.toml

# HOME and TMPDIR point at the data volume: nothing is written to the root file system.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/traceflow \
    TMPDIR=/var/lib/traceflow/tmp \
    RUNNER_CONFIG=/etc/traceflow/runner.toml

USER 10001:10001
WORKDIR /var/lib/traceflow
VOLUME ["/var/lib/traceflow"]

# 8080: SDK ingest (WebSocket, HTTP batch, WebRTC signaling). 9090: admin (loopback in
# this image's runner.toml; the Helm chart binds it for the kubelet's probes).
EXPOSE 8080/tcp 9090/tcp

# The Runner drains on SIGTERM (goaway to every session, in-flight batches finish) and
# exits 0; give it `docker stop --time` above its drain deadline (60 s by default).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=4)"]

ENTRYPOINT ["tini", "--", "runner", "serve"]
CMD []
