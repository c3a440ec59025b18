"""Render the Helm chart with Helm's own library (helm-python-sdk) and read the result."""

from __future__ import annotations

import base64
import json
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "traceflow-runner"
RELEASE = "tf"
NAMESPACE = "traceflow"
PROMETHEUS_API = "monitoring.coreos.com/v1"

# Values files rendered by every test that takes `example`; None = the chart's defaults.
EXAMPLES: dict[str, Path | None] = {
    "defaults": None,
    "embedded": CHART_DIR / "ci" / "embedded-values.yaml",
    "ha": CHART_DIR / "ci" / "ha-values.yaml",
    "ha-deployment": CHART_DIR / "ci" / "ha-deployment-values.yaml",
}

Doc = dict[str, Any]


def helm() -> Any:
    """The helm_python module, or a skip naming the package to install."""
    return pytest.importorskip(
        "helm_python", reason="helm-python-sdk is not installed (pip install helm-python-sdk)"
    )


def load_values(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    values: dict[str, Any] = helm().values_from_yaml(path.read_text(encoding="utf-8"))
    return values


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Values merged like repeated `-f` files: tables merge, everything else replaces."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def render(values: Mapping[str, Any], *, api_versions: tuple[str, ...] = ()) -> Rendered:
    """`helm template tf CHART -n traceflow [--api-versions …]` with these values.

    helm-python-sdk's `Chart.render` has no `api_versions` parameter, but the C ABI of
    Helm's library that it binds takes one in the render options (`helm template
    --api-versions`), so this calls it directly.
    """
    h = helm()
    from helm_python import _native

    options = {"name": RELEASE, "namespace": NAMESPACE, "api_versions": list(api_versions)}
    with h.Chart.load(str(CHART_DIR)) as chart:
        out = _native.call_string(
            "helm_render", chart._raw(), json.dumps(dict(values)), json.dumps(options)
        )
    files: dict[str, str] = json.loads(out)
    docs: list[Doc] = []
    notes = ""
    for name, text in sorted(files.items()):
        if name.endswith("NOTES.txt"):
            notes = text
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return Rendered(docs, notes)


@dataclass(frozen=True)
class Rendered:
    docs: list[Doc]
    notes: str

    def kinds(self) -> list[str]:
        return sorted(d["kind"] for d in self.docs)

    def all(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name_suffix: str = "") -> Doc:
        found = [d for d in self.all(kind) if d["metadata"]["name"].endswith(name_suffix)]
        found = [d for d in found if name_suffix or d["metadata"]["name"] == fullname()]
        assert len(found) == 1, f"expected one {kind} named *{name_suffix}, found {len(found)}"
        return found[0]

    @property
    def workload(self) -> Doc:
        found = self.all("StatefulSet") + self.all("Deployment")
        assert len(found) == 1, f"expected one workload, found {[d['kind'] for d in found]}"
        return found[0]

    @property
    def pod(self) -> Doc:
        spec: Doc = self.workload["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> Doc:
        containers: list[Doc] = self.pod["containers"]
        assert [c["name"] for c in containers] == ["runner"]
        return containers[0]

    def runner_toml(self) -> str:
        text: str = self.one("ConfigMap")["data"]["runner.toml"]
        return text

    def secret_data(self, name: str | None = None) -> dict[str, str]:
        """The chart's Secret, decoded; {} when the chart creates none."""
        wanted = name or fullname()
        for doc in self.all("Secret"):
            if doc["metadata"]["name"] == wanted:
                return {k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}
        return {}


def fullname() -> str:
    return f"{RELEASE}-traceflow-runner"


def tool(name: str) -> str | None:
    """A command from the venv this test runs in, else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


# Sections whose settings classes exist but are being wired into `runner.config.Config`
# by other work. Until `Config` uses the class, the rendered section is validated against
# the class itself; once it does, this test runs `parse_config` exactly as the Runner does.
PENDING_SECTIONS = {
    "webrtc": ("runner.ingest.rtc_settings", "WebRtcSettings"),
    "forward": ("runner.forward.settings", "ForwardSettings"),
    "cloud": ("runner.forward.settings", "CloudSettings"),
    "dlq": ("runner.forward.settings", "DlqSettings"),
    "control_plane": ("runner.policy.settings", "ControlPlaneSettings"),
}

# What the Secret of ha-values.yaml's comment holds (that file uses secrets.existingSecret).
EXISTING_SECRET = {
    "RUNNER_ADMIN_TOKEN": "an-admin-token-of-forty-eight-characters-000000000",
    "TRACEFLOW_PII_TOKEN_KEY": "11" * 32,
    "TRACEFLOW_PII_VAULT_KEY": "22" * 32,
    "TRACEFLOW_AT_REST_KEYS": "at-1:" + "33" * 32,
    "RUNNER_BUFFER_REDIS_URL": "redis://:password@redis-master.redis:6379/0",
    "RUNNER_CLOUD_TOKEN": "cloud-token",
    "RUNNER_CONTROL_PLANE_TOKEN": "control-plane-token",
    "AWS_ACCESS_KEY_ID": "access",
    "AWS_SECRET_ACCESS_KEY": "secret",
    "RUNNER_PROJECTS": '[{"id":"web","tenant":"acme-bank","api_key_sha256":["' + "a" * 64 + '"]}]',
}


def pod_environment(rendered: Rendered, pod_name: str) -> dict[str, str]:
    """The container's environment as the kubelet builds it from the rendered objects."""
    secrets: dict[str, dict[str, str]] = {}
    env: dict[str, str] = {}
    for item in rendered.container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        source: Doc = item["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name"
            env[item["name"]] = pod_name
            continue
        ref = source["secretKeyRef"]
        if ref["name"] not in secrets:
            secrets[ref["name"]] = rendered.secret_data(ref["name"]) or EXISTING_SECRET
        value = secrets[ref["name"]].get(ref["key"])
        if value is None:
            assert ref.get("optional"), f"{ref['key']} is missing from Secret {ref['name']}"
            continue
        env[item["name"]] = value
    return env
