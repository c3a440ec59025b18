"""The Helm chart, rendered by Helm's library for every example values file."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from tests.deploy.chart import (
    CHART_DIR,
    EXAMPLES,
    NAMESPACE,
    PROMETHEUS_API,
    Doc,
    Rendered,
    fullname,
    helm,
    load_values,
    merge,
    render,
)

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a current one.
KUBERNETES_VERSIONS = ("1.27.0", "1.33.0")
CRD_KINDS = {"ServiceMonitor"}  # no schema in kubernetes-validate; checked by assertions


def _env(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_chart_lints_clean(name: str) -> None:
    """`helm lint --strict` finds no warning or error for any example values file."""
    report = helm().lint(str(CHART_DIR), load_values(EXAMPLES[name]), strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems, problems
    assert not report["errors"], report["errors"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_kubernetes_schemas(example: Rendered, version: str) -> None:
    """Every rendered object validates strictly (no unknown field) against Kubernetes' schemas."""
    kv: Any = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    checked = 0
    for doc in example.docs:
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {e.message}")
        checked += 1
    assert checked >= 7


def test_every_object_is_namespaced_and_labelled(example: Rendered) -> None:
    """Each object names the release namespace and carries the chart's selector labels."""
    for doc in example.docs:
        meta = doc["metadata"]
        assert meta.get("namespace") == NAMESPACE, doc["kind"]
        assert meta["labels"]["app.kubernetes.io/instance"] == "tf", doc["kind"]
        assert meta["labels"]["app.kubernetes.io/name"] == "traceflow-runner", doc["kind"]


def test_probes_prestop_drain_and_grace_period(example: Rendered) -> None:
    """Liveness /healthz, readiness /readyz on the admin port; preStop drains within the grace."""
    c = example.container
    admin_port = {p["name"]: p["containerPort"] for p in c["ports"]}["admin"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:3] == ["runner", "drain", "--deadline"]
    deadline = int(command[3])
    assert command[4:] == ["--no-wait-stop"]  # the hook ends with the drain, not after the exit
    assert example.pod["terminationGracePeriodSeconds"] > deadline
    toml = example.runner_toml()
    assert f"drain_deadline_s = {deadline}" in toml  # a SIGTERM drain keeps the same deadline
    assert f'listen = "0.0.0.0:{admin_port}"' in toml  # the kubelet reaches the admin port
    token = _env(c)["RUNNER_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["key"] == "RUNNER_ADMIN_TOKEN"  # /admin/drain needs the token; probes do not


def test_pod_runs_non_root_read_only_without_capabilities(example: Rendered) -> None:
    """Non-root, read-only root fs, ALL capabilities dropped, RuntimeDefault seccomp, no token."""
    pod, sc = example.pod, example.container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False  # no RUNNER_* Service variables
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m for m in example.container["volumeMounts"]}
    assert {"/var/lib/traceflow", "/var/lib/traceflow/tmp"} <= set(mounts)
    assert mounts["/etc/traceflow/config"]["readOnly"] is True
    resources = example.container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) & set(resources["limits"])


def test_embedded_mode_is_one_statefulset_replica_on_a_volume(
    examples: dict[str, Rendered],
) -> None:
    """Embedded: a one-replica StatefulSet with a PVC for data_dir, Redis inside the pod."""
    r = examples["embedded"]
    sts = r.one("StatefulSet")
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["serviceName"] == f"{fullname()}-headless"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert 'redis_url = "embedded"' in r.runner_toml()
    assert "RUNNER_BUFFER_REDIS_URL" not in _env(r.container)
    assert not r.all("HorizontalPodAutoscaler")


def test_ha_mode_shares_external_redis_and_object_store(examples: dict[str, Rendered]) -> None:
    """HA: an autoscaled set of replicas, external Redis and s3:// dead letters, spread out."""
    r = examples["ha"]
    toml = r.runner_toml()
    assert 'redis_url = "embedded"' not in toml
    assert 'url = "s3://traceflow-dlq/runners"' in toml
    assert "generate_dev_keys = false" in toml  # replicas share one token key
    assert "generate_dev_key = false" in toml  # and one at-rest keyring for the shared DLQ
    env = _env(r.container)
    shared = ("TRACEFLOW_PII_TOKEN_KEY", "TRACEFLOW_PII_VAULT_KEY", "TRACEFLOW_AT_REST_KEYS")
    for key in ("RUNNER_BUFFER_REDIS_URL", *shared):
        ref = env[key]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "traceflow-runner-secrets"
    assert env["RUNNER_RUNNER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    hpa = r.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == r.workload["kind"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert "replicas" not in r.workload["spec"]  # the HPA owns the count
    assert r.pod["affinity"]["podAntiAffinity"]
    assert r.container["image"].endswith(
        "@sha256:" + "3f1b0c3e6b7a2f1c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c"
    )


def test_ha_without_persistence_is_a_deployment(examples: dict[str, Rendered]) -> None:
    """HA without volumes: a Deployment with an emptyDir data_dir and a zero-downtime rollout."""
    r = examples["ha-deployment"]
    d = r.one("Deployment")
    assert d["spec"]["replicas"] == 2
    assert d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    volumes = {v["name"]: v for v in r.pod["volumes"]}
    assert "emptyDir" in volumes["data"]
    assert not r.all("StatefulSet")


def test_disruption_budget_keeps_replicas(example: Rendered) -> None:
    """A PDB lets at most one Runner be evicted at a time (and never blocks a node drain)."""
    pdb = example.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert (
        pdb["spec"]["selector"]["matchLabels"]
        == example.workload["spec"]["selector"]["matchLabels"]
    )


def _ports(rule: Doc) -> set[tuple[str, int]]:
    return {(p["protocol"], p["port"]) for p in rule["ports"]}


def test_network_policy_admits_sdk_networks_only(examples: dict[str, Rendered]) -> None:
    """Ingress: SDK CIDRs to the ingest port (and UDP range); egress: DNS and nothing else."""
    r = examples["embedded"]
    np = r.one("NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    ingest, udp, metrics = np["spec"]["ingress"]
    assert _ports(ingest) == {("TCP", 8080)}
    assert [p["ipBlock"]["cidr"] for p in ingest["from"]] == ["10.20.0.0/16"]
    assert udp["ports"] == [{"port": 50000, "endPort": 50199, "protocol": "UDP"}]
    assert _ports(metrics) == {("TCP", 9090)}
    dns, ice = np["spec"]["egress"]  # air-gapped embedded mode: DNS, and ICE to the SDKs
    assert _ports(dns) == {("UDP", 53), ("TCP", 53)}
    assert [p["ipBlock"]["cidr"] for p in ice["to"]] == ["10.20.0.0/16"]


def test_network_policy_egress_reaches_configured_services_only(
    examples: dict[str, Rendered],
) -> None:
    """HA egress: DNS, Redis, S3, the cloud and the control plane, each to its own peers."""
    np = examples["ha"].one("NetworkPolicy")
    _dns, redis, s3, cloud, control_plane = np["spec"]["egress"]
    assert _ports(redis) == {("TCP", 6379)}  # the Runner has no Sentinel client
    assert redis["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "redis"
    }
    assert _ports(s3) == {("TCP", 9000)}
    assert cloud["to"] == [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
    assert control_plane["to"] == [{"ipBlock": {"cidr": "198.51.100.0/24"}}]
    for rule in np["spec"]["egress"]:
        for peer in rule["to"]:
            if "ipBlock" in peer:
                assert ipaddress.ip_network(peer["ipBlock"]["cidr"]).num_addresses < 2**24


def test_webrtc_udp_range_in_service_and_config(examples: dict[str, Rendered]) -> None:
    """WebRTC: the UDP range is a Service port list and `[webrtc] udp_ports` in runner.toml."""
    r = examples["embedded"]
    svc = r.one("Service", "-webrtc")
    ports = [(p["protocol"], p["port"]) for p in svc["spec"]["ports"]]
    assert ports == [("UDP", p) for p in range(50000, 50200)]
    toml = r.runner_toml()
    assert "udp_ports = [50000, 50199]" in toml
    assert "max_peers = 200" in toml  # one port per peer connection
    assert 'remote_networks = ["10.20.0.0/16"]' in toml
    for name in ("defaults", "ha"):
        assert "enabled = false" in examples[name].runner_toml()
        assert not [
            s for s in examples[name].all("Service") if s["metadata"]["name"].endswith("-webrtc")
        ]


def test_ingest_service_is_tcp_only(example: Rendered) -> None:
    """The SDK Service exposes only the ingest port; admin stays on the headless Service."""
    svc = example.one("Service")
    assert [(p["name"], p["protocol"]) for p in svc["spec"]["ports"]] == [("ingest", "TCP")]
    headless = example.one("Service", "-headless")
    assert headless["spec"]["clusterIP"] == "None"


def test_service_monitor_only_with_prometheus_operator() -> None:
    """A ServiceMonitor is rendered when the cluster serves monitoring.coreos.com/v1, else not."""
    with_crd = render({}, api_versions=(PROMETHEUS_API,))
    without = render({})
    sm = with_crd.one("ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "admin"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["selector"]["matchLabels"]["traceflow.io/service"] == "headless"
    assert not without.all("ServiceMonitor")
    assert "No ServiceMonitor" in without.notes
    disabled = render({"serviceMonitor": {"enabled": False}}, api_versions=(PROMETHEUS_API,))
    assert not disabled.all("ServiceMonitor")


def test_secrets_stay_out_of_the_config_map(examples: dict[str, Rendered]) -> None:
    """Secret values go to the Secret and the environment, never into runner.toml."""
    r = examples["ha-deployment"]
    secret = r.secret_data()
    values = load_values(EXAMPLES["ha-deployment"])["secrets"]
    for key, value in values.items():
        if value:
            assert value not in r.runner_toml(), key
            assert value in secret.values(), key
    assert set(secret) >= {"RUNNER_ADMIN_TOKEN", "RUNNER_PROJECTS", "TRACEFLOW_PII_TOKEN_KEY"}
    assert '"api_key_sha256"' in secret["RUNNER_PROJECTS"]


def test_existing_secret_is_referenced_not_created(examples: dict[str, Rendered]) -> None:
    """With secrets.existingSecret the chart creates no Secret; all but the admin token optional."""
    r = examples["ha"]
    assert not r.all("Secret")
    refs = {
        name: e["valueFrom"]["secretKeyRef"]
        for name, e in _env(r.container).items()
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs["RUNNER_ADMIN_TOKEN"].get("optional") is None  # drain needs it
    assert all(ref["optional"] for name, ref in refs.items() if name != "RUNNER_ADMIN_TOKEN")


def test_admin_token_is_generated_when_not_given(examples: dict[str, Rendered]) -> None:
    """Without secrets.adminToken the chart generates a long random admin token."""
    token = examples["defaults"].secret_data()["RUNNER_ADMIN_TOKEN"]
    assert len(token) == 48
    assert token.isalnum()


def test_policies_and_certificates_are_mounted(examples: dict[str, Rendered]) -> None:
    """Policy files become a ConfigMap on /etc/traceflow/policies, named in runner.toml;
    certificates a Secret on /etc/traceflow/certs, or the bank's existing one."""
    r = examples["embedded"]
    cm = r.one("ConfigMap", "-policies")
    assert "version = 1" in cm["data"]["default.toml"]
    assert 'policies_dir = "/etc/traceflow/policies"' in r.runner_toml()
    certs = render(
        merge(load_values(EXAMPLES["embedded"]), {"certificates": {"files": {"ca.pem": "PEM"}}})
    )
    mounts = {m["name"]: m for m in certs.container["volumeMounts"]}
    assert mounts["certs"] == {
        "name": "certs",
        "mountPath": "/etc/traceflow/certs",
        "readOnly": True,
    }
    assert certs.secret_data(f"{fullname()}-certs") == {"ca.pem": "PEM"}
    theirs = render(
        merge(load_values(EXAMPLES["embedded"]), {"certificates": {"existingSecret": "bank-tls"}})
    )
    volumes = {v["name"]: v for v in theirs.pod["volumes"]}
    assert volumes["certs"]["secret"]["secretName"] == "bank-tls"  # referenced, not created
    assert theirs.secret_data(f"{fullname()}-certs") == {}


def test_extra_config_merges_over_rendered_toml(examples: dict[str, Rendered]) -> None:
    """`config:` values are merged into runner.toml over what the chart renders."""
    toml = examples["embedded"].runner_toml()
    assert "max_connections_per_project = 20000" in toml
    assert 'listen = "0.0.0.0:8080"' in toml  # the rest of [ingest] stays
    assert "vault_enabled = false" in examples["ha-deployment"].runner_toml()


def test_config_change_rolls_the_pods() -> None:
    """A values change that alters runner.toml changes the pod template (checksum annotation)."""
    a = render({}).workload["spec"]["template"]["metadata"]["annotations"]
    b = render({"runner": {"logLevel": "debug"}}).workload["spec"]["template"]["metadata"]
    assert a["checksum/config"] != b["annotations"]["checksum/config"]
