"""values.schema.json and the chart's cross-field checks refuse bad values with a clear message."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.chart import CHART_DIR, EXAMPLES, helm, load_values, merge, render

HA = "ha-deployment"  # an HA example with inline secrets, so single changes are easy to make

SCHEMA_REJECTS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown mode", {"mode": "cluster"}, "/mode"),
    ("typo at the top", {"replicas": 3}, "'replicas' not allowed"),
    ("typo in a table", {"runner": {"drainDeadline": 60}}, "'drainDeadline' not allowed"),
    ("latest tag", {"image": {"tag": "latest"}}, "/image/tag"),
    ("digest not sha256", {"image": {"digest": "md5:abc"}}, "/image/digest"),
    ("port out of range", {"ingest": {"port": 70000}}, "/ingest/port"),
    ("deadline zero", {"runner": {"drainDeadlineSeconds": 0}}, "/runner/drainDeadlineSeconds"),
    ("embedded without volume", {"persistence": {"enabled": False}}, "/persistence/enabled"),
    ("embedded autoscaled", {"autoscaling": {"enabled": True}}, "/autoscaling/enabled"),
    (
        "plain-text API keys",
        {"projects": [{"id": "web", "tenant": "acme", "api_keys": ["tf_live_secret_key"]}]},
        "'api_keys' not allowed",
    ),
    (
        "short key digest",
        {"projects": [{"id": "web", "tenant": "acme", "api_key_sha256": ["abc"]}]},
        "/projects/0/api_key_sha256/0",
    ),
    ("bad SDK CIDR", {"networkPolicy": {"sdkCidrs": ["10.0.0.0"]}}, "/networkPolicy/sdkCidrs/0"),
    ("no SDK network", {"networkPolicy": {"sdkCidrs": []}}, "/networkPolicy/sdkCidrs"),
    ("redis URL scheme", {"buffer": {"redisUrl": "http://redis:6379"}}, "/buffer/redisUrl"),
    ("dead letters not s3", {"dlq": {"url": "file:///tmp"}}, "/dlq/url"),
    ("PII key not 32 bytes", {"secrets": {"piiTokenKey": "abcd"}}, "/secrets/piiTokenKey"),
    ("UDP port below 1024", {"webrtc": {"udpPortRange": {"start": 80, "end": 90}}}, "/start"),
    ("log level", {"runner": {"logLevel": "verbose"}}, "/runner/logLevel"),
]

TEMPLATE_REJECTS: list[tuple[str, str, dict[str, Any], str]] = [
    (
        "grace not above deadline",
        "embedded",
        {"runner": {"drainDeadlineSeconds": 90, "terminationGracePeriodSeconds": 90}},
        "must be above runner.drainDeadlineSeconds",
    ),
    ("ha without Redis", HA, {"buffer": {"redisUrl": ""}}, "needs an external Redis"),
    ("ha with local dead letters", HA, {"dlq": {"url": ""}}, "shared dead-letter store"),
    ("ha without PII keys", HA, {"secrets": {"piiTokenKey": ""}}, "share one token key"),
    (
        "ha generating keys",
        HA,
        {"pii": {"generateDevKeys": True}},
        "each replica would make its own keys",
    ),
    ("embedded with Redis URL", "embedded", {"buffer": {"redisUrl": "redis://r:6379"}}, "mode ha"),
    (
        "reversed UDP range",
        "embedded",
        {"webrtc": {"udpPortRange": {"start": 50100, "end": 50000}}},
        "must not be below",
    ),
    (
        "UDP range too wide",
        "embedded",
        {"webrtc": {"udpPortRange": {"start": 40000, "end": 50000}}},
        "more than 1024 ports",
    ),
    (
        "cloud without egress",
        HA,
        {"cloud": {"endpoint": "https://ingest.traceflow.example"}},
        "networkPolicy.egress.cloud.to is empty",
    ),
    (
        "Redis without egress",
        HA,
        {"networkPolicy": {"egress": {"redis": {"to": []}}}},
        "networkPolicy.egress.redis.to is empty",
    ),
    (
        "grace not above deadline plus spill",
        "embedded",
        {"config": {"forward": {"drain_spill": True, "spill_deadline_s": 45}}},
        "plus config.forward.spill_deadline_s (90)",
    ),
    (
        "config moves the UDP range",
        "embedded",
        {"config": {"webrtc": {"udp_ports": [40000, 40099]}}},
        "config.webrtc.udp_ports is rendered by the chart",
    ),
    (
        "config moves the admin listener",
        "embedded",
        {"config": {"admin": {"listen": "127.0.0.1:9090"}}},
        "set admin.port instead",
    ),
    (
        "config points embedded at a Redis",
        "embedded",
        {"config": {"buffer": {"redis_url": "redis://r:6379/0"}}},
        "config.buffer.redis_url is rendered by the chart",
    ),
    (
        "config gives SIGTERM another drain deadline",
        "embedded",
        {"config": {"forward": {"drain_deadline_s": 600}}},
        "set runner.drainDeadlineSeconds instead",
    ),
]


@pytest.mark.parametrize(
    ("change", "where"),
    [(c, w) for _, c, w in SCHEMA_REJECTS],
    ids=[i for i, _, _ in SCHEMA_REJECTS],
)
def test_schema_rejects_bad_values(change: dict[str, Any], where: str) -> None:
    """values.schema.json refuses the value and the message points at it."""
    h = helm()
    with pytest.raises(h.HelmValuesError) as caught:
        render(merge(load_values(EXAMPLES["embedded"]), change))
    assert where in str(caught.value)


@pytest.mark.parametrize(
    ("base", "change", "message"),
    [(b, c, m) for _, b, c, m in TEMPLATE_REJECTS],
    ids=[i for i, _, _, _ in TEMPLATE_REJECTS],
)
def test_chart_rejects_inconsistent_values(base: str, change: dict[str, Any], message: str) -> None:
    """Cross-field rules the schema cannot state fail the render with a message naming the fix."""
    h = helm()
    base_values = load_values(EXAMPLES[base])
    render(base_values)  # the example itself renders
    with pytest.raises(h.HelmRenderError) as caught:
        render(merge(base_values, change))
    assert message in str(caught.value)


def test_schema_accepts_every_example() -> None:
    """Each example values file passes values.schema.json as it is."""
    h = helm()
    with h.Chart.load(str(CHART_DIR)) as chart:
        for path in EXAMPLES.values():
            chart.validate_schema(load_values(path))


def test_grace_period_covers_a_spilling_drain() -> None:
    """With drains that spill, the default grace is deadline + spill deadline + 30 s."""
    plain = render({})
    assert plain.pod["terminationGracePeriodSeconds"] == 60 + 30
    spilling = render({"config": {"forward": {"drain_spill": True}}})
    assert spilling.pod["terminationGracePeriodSeconds"] == 60 + 60 + 30  # Runner default 60 s
    tuned = render({"config": {"forward": {"drain_spill": True, "spill_deadline_s": 12.5}}})
    assert tuned.pod["terminationGracePeriodSeconds"] == 60 + 13 + 30
    off = render({"config": {"forward": {"drain_spill": False, "spill_deadline_s": 600}}})
    assert off.pod["terminationGracePeriodSeconds"] == 60 + 30
