"""The systemd unit of the VM path: valid for systemd, hardened, stops by draining."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.chart import REPO

UNIT = REPO / "deploy" / "systemd" / "traceflow-runner.service"
INSTALLED_RUNNER = "/opt/traceflow/venv/bin/runner"


def _directives() -> dict[str, list[str]]:
    """Every `Key=value` of the unit, in order (a key may repeat)."""
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` reports nothing (no unknown key, every command executable)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    runner = Path(sys.executable).with_name("runner")
    text = UNIT.read_text(encoding="utf-8").replace(INSTALLED_RUNNER, str(runner))
    copy = tmp_path / UNIT.name
    copy.write_text(text, encoding="utf-8")
    proc = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert not proc.stderr.strip(), proc.stderr


def test_unit_runs_hardened_as_a_dedicated_user() -> None:
    """A dedicated user, no capabilities, read-only system, only the state directory writable."""
    d = _directives()
    assert d["User"] == ["traceflow"]
    assert d["Group"] == ["traceflow"]
    assert d["StateDirectory"] == ["traceflow"]
    assert d["CapabilityBoundingSet"] == [""]
    assert d["AmbientCapabilities"] == [""]
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert d[key] == [value], key
    assert "@system-service" in d["SystemCallFilter"]
    assert "ReadWritePaths" not in d  # StateDirectory is the one writable path


def test_unit_stops_by_draining_within_its_timeout() -> None:
    """ExecStop runs `runner drain`; SIGTERM to the Runner only; the stop timeout exceeds it."""
    d = _directives()
    assert d["ExecStart"] == [f"{INSTALLED_RUNNER} serve"]
    (stop,) = d["ExecStop"]
    words = stop.lstrip("-").split()
    assert words[:3] == [INSTALLED_RUNNER, "drain", "--deadline"]
    assert int(d["TimeoutStopSec"][0]) > int(words[3])
    assert d["KillSignal"] == ["SIGTERM"]
    assert d["KillMode"] == ["mixed"]
    assert d["Environment"][0] == "RUNNER_CONFIG=/etc/traceflow/runner.toml"
    assert d["EnvironmentFile"] == ["/etc/traceflow/runner.env"]
