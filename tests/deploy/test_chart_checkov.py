"""checkov on every rendered example: each finding is fixed, or skipped in the chart with why."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from tests.deploy.chart import REPO, Rendered, tool

# The only checks the chart skips (templates/_helpers.tpl "checkovSkips"), each with its reason.
ACCEPTED_SKIPS = {"CKV_K8S_35", "CKV_K8S_43", "CKV_K8S_15"}
CHECKOV_TIMEOUT_S = 300


def _checkov() -> str:
    """checkov from $CHECKOV, the repo's .venv-checkov (its pins clash with ours), or PATH."""
    for candidate in (os.environ.get("CHECKOV"), str(REPO / ".venv-checkov" / "bin" / "checkov")):
        if candidate and Path(candidate).exists():
            return candidate
    found = tool("checkov")
    if found is None:
        pytest.skip(
            "checkov is not installed (python3 -m venv .venv-checkov && "
            ".venv-checkov/bin/pip install checkov==3.3.30)"
        )
    return found


@pytest.fixture(scope="module")
def report(
    examples: dict[str, Rendered], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One checkov run over the manifests of every example (checkov takes seconds to start)."""
    checkov = _checkov()
    folder = tmp_path_factory.mktemp("manifests")
    for name, rendered in examples.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump_all(rendered.docs), encoding="utf-8")
    proc = subprocess.run(
        [checkov, "--framework", "kubernetes", "-d", str(folder), "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=CHECKOV_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_checkov_reports_no_failed_check(report: dict[str, Any]) -> None:
    """No checkov check fails on any rendered example."""
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["resource_count"] >= 30


def test_checkov_skips_are_the_accepted_ones_with_reasons(report: dict[str, Any]) -> None:
    """Only the accepted checks are skipped, and each skip carries its reason."""
    skipped = report["results"]["skipped_checks"]
    assert {c["check_id"] for c in skipped} <= ACCEPTED_SKIPS
    for check in skipped:
        assert len(check["check_result"].get("suppress_comment", "")) > 40, check["check_id"]
    assert report["summary"]["passed"] > 300
