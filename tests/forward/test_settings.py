"""The [cloud], [dlq] and [forward] settings: defaults, strictness, and reading them from Config."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from runner.forward.forwarder import settings_for
from runner.forward.settings import CloudSettings, DlqSettings, ForwardSettings
from tests.support import make_config


def test_every_field_has_a_default_and_empty_means_air_gapped_and_local() -> None:
    """Empty sections are valid: no endpoint = air-gapped; no DLQ url = a folder under data_dir."""
    cloud, dlq, forward = CloudSettings(), DlqSettings(), ForwardSettings()
    assert cloud.air_gapped
    assert dlq.url == ""
    assert forward.zstd_level == 3
    secret = CloudSettings.model_validate({"token": "s3cr3t"})
    assert "s3cr3t" not in repr(secret), "the token never prints"


@pytest.mark.parametrize(
    ("kind", "values", "message"),
    [
        (CloudSettings, {"endpont": "http://x"}, "Extra inputs"),
        (CloudSettings, {"endpoint": "ftp://x"}, "http"),
        (CloudSettings, {"backoff_initial_s": 10, "backoff_max_s": 1}, "backoff"),
        (CloudSettings, {"client_key": "k.pem"}, "client_cert"),
        (DlqSettings, {"url": "minio://bucket"}, "s3://"),
        (DlqSettings, {"sse": "s3"}, "s3:// dead-letter store only"),
        (ForwardSettings, {"claim_idle_s": 10, "claim_interval_s": 6}, "half"),
        (ForwardSettings, {"zstd_level": 30}, "less than or equal"),
    ],
)
def test_bad_values_and_unknown_keys_are_refused(
    kind: type[CloudSettings | DlqSettings | ForwardSettings],
    values: dict[str, object],
    message: str,
) -> None:
    """A typo or an impossible value fails loudly, naming what is wrong."""
    with pytest.raises(ValidationError, match=message):
        kind.model_validate(values)


def test_settings_are_frozen() -> None:
    """Settings cannot change after load."""
    with pytest.raises(ValidationError):
        ForwardSettings().linger_s = 2.0


def test_token_env_wins_over_token_and_s3_prefix_is_normalised() -> None:
    """The bearer token comes from token_env when set; s3://bucket/a/b gives prefix "a/b/"."""
    cloud = CloudSettings.model_validate(
        {"endpoint": "https://cloud.example/", "token": "file", "token_env": "TF_TOKEN"}
    )
    assert cloud.endpoint == "https://cloud.example"
    assert cloud.chunks_url == "https://cloud.example/v1/chunks"
    assert cloud.bearer({"TF_TOKEN": "env"}) == "env"
    assert cloud.bearer({}) == "file"
    dlq = DlqSettings(url="s3://bucket/a/b/")
    assert (dlq.bucket, dlq.prefix) == ("bucket", "a/b/")
    assert DlqSettings(url="s3://bucket").prefix == ""


def test_settings_come_from_the_runner_config(tmp_path: Path) -> None:
    """settings_for reads [cloud] and [dlq] from a Config (placeholder sections included)."""
    config = make_config(tmp_path, "redis://127.0.0.1:1/0", cloud={"endpoint": "http://c:1"},
                         dlq={"url": "s3://b/p"})  # fmt: skip
    cloud, dlq, forward = settings_for(config)
    assert cloud.endpoint == "http://c:1"
    assert dlq.bucket == "b"
    assert forward == ForwardSettings(enabled=False)  # make_config turns forwarding off
