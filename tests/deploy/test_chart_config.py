"""The runner.toml and environment the chart gives a pod pass the Runner's own config check."""

from __future__ import annotations

import importlib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError, create_model

from runner.config import Config, apply_env, parse_config
from tests.deploy.chart import PENDING_SECTIONS, Rendered, fullname, pod_environment


def _pending_models() -> dict[str, type[BaseModel]]:
    models: dict[str, type[BaseModel]] = {}
    for section, (module, name) in PENDING_SECTIONS.items():
        model = getattr(importlib.import_module(module), name)
        field = Config.model_fields.get(section)
        if field is None or field.annotation is not model:
            models[section] = model
    return models


def runner_config(toml_text: str, environ: Mapping[str, str]) -> Any:
    """Validate like `runner check-config` in the pod; see PENDING_SECTIONS."""
    data = tomllib.loads(toml_text)
    pending = _pending_models()
    if not pending:
        return parse_config(data, environ)
    secret_env = {
        field.default
        for model in pending.values()
        for name, field in model.model_fields.items()
        if name.endswith("_env") and isinstance(field.default, str)
    }
    env = {k: v for k, v in environ.items() if k not in secret_env}
    fields: dict[str, Any] = {s: (m, m()) for s, m in pending.items()}
    model = create_model("ConfigWithPendingSections", __base__=Config, **fields)
    try:
        return model.model_validate(apply_env(data, env))
    except ValidationError as e:
        pytest.fail(f"the rendered runner.toml is refused: {e}")


def test_rendered_config_is_a_valid_runner_config(example: Rendered) -> None:
    """runner.toml from the ConfigMap plus the pod's environment is accepted by the Runner."""
    pod_name = f"{fullname()}-0"
    env = pod_environment(example, pod_name)
    cfg = runner_config(example.runner_toml(), env)
    assert cfg.runner.id == pod_name
    assert cfg.runner.data_dir == Path("/var/lib/traceflow")
    assert cfg.admin.listen.startswith("0.0.0.0:")
    assert cfg.admin.resolved_token() == env["RUNNER_ADMIN_TOKEN"]
    assert cfg.pii.workers >= 1  # never one per node core inside a pod
    if "embedded" in example.one("ConfigMap")["metadata"]["labels"]["traceflow.io/mode"]:
        assert cfg.buffer.redis_url == "embedded"
    else:
        assert cfg.buffer.redis_url.startswith("redis://")
        assert cfg.pii.generate_dev_keys is False
        assert cfg.projects, "HA examples configure projects"
