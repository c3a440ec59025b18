"""Fixtures of the deployment tests: the chart rendered once per example values file."""

from __future__ import annotations

import pytest

from tests.deploy.chart import EXAMPLES, PROMETHEUS_API, Rendered, load_values, render


@pytest.fixture(scope="session")
def examples() -> dict[str, Rendered]:
    """Every example values file rendered as on a cluster with the Prometheus Operator."""
    return {
        name: render(load_values(path), api_versions=(PROMETHEUS_API,))
        for name, path in EXAMPLES.items()
    }


@pytest.fixture(params=sorted(EXAMPLES))
def example(request: pytest.FixtureRequest, examples: dict[str, Rendered]) -> Rendered:
    """One rendered example (the test runs once per values file)."""
    rendered: Rendered = examples[request.param]
    return rendered
