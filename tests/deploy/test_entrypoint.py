"""The image's command and environment, and the chart's pod spec, run against the repository.

There is no Docker engine or cluster here, so each test builds what the container would
see from the real sources (the Dockerfile's ENTRYPOINT/CMD/ENV/WORKDIR/COPY, or the
rendered StatefulSet, ConfigMap and Secret), maps the image's paths to a temporary
directory (/opt/venv → this venv, /var/lib/traceflow → a fresh data dir, /etc/traceflow →
copies of the files the image or the pod mounts there) and the fixed ports to free
ones, then starts embedded mode, waits for readiness and stops it as Docker or the
kubelet would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runner.config import parse_config
from runner.errors import ConfigError
from tests.deploy.chart import PENDING_SECTIONS, REPO, Rendered, fullname, pod_environment, render
from tests.deploy.dockerfile import Stage, parse

READY_TIMEOUT_S = 150.0  # the PII engine's workers start first; a loaded CI box is slow
POLL_S = 0.2  # interval between readiness polls, not a wait for something to happen
EXIT_AFTER_GROUP_S = 15.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Sandbox:
    """Image paths and addresses mapped to local ones (longest prefix first)."""

    root: Path
    mapping: dict[str, str] = field(default_factory=dict)

    def add(self, image_path: str, local: str) -> None:
        self.mapping[image_path] = local
        self.mapping = dict(sorted(self.mapping.items(), key=lambda kv: -len(kv[0])))

    def translate(self, text: str) -> str:
        for image_path, local in self.mapping.items():
            text = text.replace(image_path, local)
        return text

    def write(self, image_path: str, content: str) -> None:
        target = Path(self.translate(image_path))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.translate(content), encoding="utf-8")


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    # A short path: the embedded Redis socket lives under data_dir (sun_path is 108 bytes).
    root = Path(tempfile.mkdtemp(prefix="tfd-"))
    box = Sandbox(root)
    box.add("/opt/venv", sys.prefix)
    box.add("/var/lib/traceflow", str(root / "data"))
    box.add("/etc/traceflow", str(root / "etc"))
    yield box
    shutil.rmtree(root, ignore_errors=True)


def _image() -> Stage:
    return parse(REPO / "Dockerfile").final


def _require_tools(argv: list[str], env: Mapping[str, str]) -> None:
    for name in (argv[0], "redis-server"):
        if shutil.which(name, path=env["PATH"]) is None:
            pytest.skip(f"{name} is not installed (apt-get install tini redis-server)")


@contextlib.contextmanager
def _started(argv: list[str], env: Mapping[str, str], cwd: str, log: Path) -> Iterator[Any]:
    """Start the container's main process in its own session; kill what is left at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _tail(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-3000:]


def _status(url: str) -> int:
    """The HTTP status of a GET, or 0 when nothing answers yet."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local URL
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def _wait_ready(proc: Any, url: str, log: Path) -> None:
    """Poll the readiness URL until it answers 200; fail if the process exits or time runs out."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode} before ready:\n{_tail(log)}")
        if _status(url) == 200:
            return
        time.sleep(POLL_S)  # a poll interval inside a deadline-bounded wait
    pytest.fail(f"not ready within {READY_TIMEOUT_S} s:\n{_tail(log)}")


def _wait_group_gone(pgid: int) -> None:
    """Every process of the container (redis-server, PII workers) has exited."""
    deadline = time.monotonic() + EXIT_AFTER_GROUP_S
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(POLL_S)  # a poll interval inside a deadline-bounded wait
    pytest.fail("processes of the container outlived its main process")


def test_image_entrypoint_serves_embedded_and_drains_on_sigterm(sandbox: Sandbox) -> None:
    """The image's command and ENV start embedded mode; HEALTHCHECK passes; SIGTERM exits 0."""
    image = _image()
    ingest, admin = _free_port(), _free_port()
    sandbox.add("0.0.0.0:8080", f"127.0.0.1:{ingest}")
    sandbox.add("127.0.0.1:9090", f"127.0.0.1:{admin}")
    for copy in image.all("COPY"):
        if not copy.args.startswith("--from="):
            source, target = copy.args.split()
            sandbox.write(target, (REPO / source).read_text(encoding="utf-8"))
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    env = {k: sandbox.translate(v) for k, v in image.env(base).items()}
    argv = [sandbox.translate(a) for a in image.exec_form("ENTRYPOINT") + image.exec_form("CMD")]
    workdir = image.last("WORKDIR")
    assert workdir is not None
    cwd = sandbox.translate(workdir.args)
    for path in (cwd, env["TMPDIR"]):  # the image's `install -d` (a volume starts empty)
        Path(path).mkdir(parents=True, exist_ok=True)
    _require_tools(argv, env)
    log = sandbox.root / "container.log"
    with _started(argv, env, cwd, log) as proc:
        _wait_ready(proc, f"http://127.0.0.1:{admin}/readyz", log)
        _, health = image.healthcheck()
        check = subprocess.run(
            [sandbox.translate(a) for a in health], env=env, cwd=cwd, timeout=30, check=False
        )
        assert check.returncode == 0, "HEALTHCHECK failed while the Runner is ready"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        assert code == 0, _tail(log)
        _wait_group_gone(proc.pid)
    output = log.read_text(encoding="utf-8", errors="replace")
    assert "runner.draining" in output, "SIGTERM stopped the Runner without a drain"
    assert "runner.drained" in output, "the drain started on SIGTERM did not finish"
    assert any((sandbox.root / "data" / "redis").glob("aof/*.aof")), "no AOF on the data volume"
    assert sorted(p.name for p in (sandbox.root / "etc").iterdir()) == ["runner.toml"]


def _pending_refusal(toml_text: str, env: Mapping[str, str]) -> str:
    """Why the Runner refuses the rendered file, if only for sections still being wired in."""
    try:
        parse_config(tomllib.loads(toml_text), env)
    except ConfigError as e:
        problems = str(e).split("; ")
        if all(p.split(".")[0].split(":")[0] in PENDING_SECTIONS for p in problems):
            return str(e)
        raise
    return ""


def _mounts(rendered: Rendered, sandbox: Sandbox) -> None:
    """Map each volume mount to a local folder holding what the volume holds."""
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    for mount in rendered.container["volumeMounts"]:
        sandbox.add(mount["mountPath"], str(sandbox.root / "pod" / mount["name"]))
    for mount in rendered.container["volumeMounts"]:
        local = Path(sandbox.translate(mount["mountPath"]))
        local.mkdir(parents=True, exist_ok=True)
        source = volumes.get(mount["name"], {})
        if "configMap" in source:
            cm = rendered.one("ConfigMap", source["configMap"]["name"].removeprefix(fullname()))
            for name, text in cm["data"].items():
                sandbox.write(f"{mount['mountPath']}/{name}", text)


def test_chart_pod_spec_serves_and_prestop_drains(sandbox: Sandbox) -> None:
    """The chart's pod (image command, env, ConfigMap, Secret) gets ready; preStop drains it."""
    ingest, admin = _free_port(), _free_port()
    rendered = render(
        {
            "ingest": {"port": ingest},
            "admin": {"port": admin},
            "runner": {"drainDeadlineSeconds": 20},
            "projects": [{"id": "web", "tenant": "acme", "api_key_sha256": ["b" * 64]}],
            "policies": {"default.toml": "version = 1\n"},
        }
    )
    pod_env = pod_environment(rendered, f"{fullname()}-0")
    refusal = _pending_refusal(rendered.runner_toml(), pod_env)
    if refusal:
        pytest.skip(f"runner.config.Config does not read these keys yet: {refusal}")
    image = _image()
    sandbox.add("0.0.0.0:", "127.0.0.1:")  # the pod's wildcard binds, on loopback here
    _mounts(rendered, sandbox)
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    # The container's env wins over the image's ENV, as in Kubernetes.
    env = {k: sandbox.translate(v) for k, v in (image.env(base) | pod_env).items()}
    assert Path(env["RUNNER_CONFIG"]).is_file()
    argv = [sandbox.translate(a) for a in image.exec_form("ENTRYPOINT") + image.exec_form("CMD")]
    workdir = image.last("WORKDIR")
    assert workdir is not None
    cwd = sandbox.translate(workdir.args)
    _require_tools(argv, env)
    probe = rendered.container["readinessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in rendered.container["ports"]}
    log = sandbox.root / "pod.log"
    with _started(argv, env, cwd, log) as proc:
        _wait_ready(proc, f"http://127.0.0.1:{ports[probe['port']]}{probe['path']}", log)
        grace = rendered.pod["terminationGracePeriodSeconds"]
        pre_stop = rendered.container["lifecycle"]["preStop"]["exec"]["command"]
        started = time.monotonic()
        hook = subprocess.run(
            [sandbox.translate(a) for a in pre_stop],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=grace,
            check=False,
        )
        assert hook.returncode == 0, hook.stdout + hook.stderr
        code = proc.wait(timeout=max(1.0, grace - (time.monotonic() - started)))
        assert code == 0, _tail(log)
        _wait_group_gone(proc.pid)
    assert "drained" in hook.stdout
