"""The Kubernetes manifests (deploy/k8s) keep the rules a schema cannot: every pod is locked
down and bounded, scaling stops at the partition count, probes and Services point at ports
that exist, and every PAYSTREAM_ variable they set is a setting the process reads.
`make check-deploy` renders them with kustomize and validates them against the schemas;
this reads the files as they are, so it needs no kubectl and no cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from paystream_callback_ingress.settings import CallbackIngressSettings
from paystream_config import DatabaseSettings, KafkaSettings, RelaySettings
from paystream_gateway_worker.settings import GatewayWorkerSettings
from paystream_ingest_api.settings import IngestSettings
from paystream_keyring.settings import KeyRingSettings
from paystream_messaging import topics
from paystream_provider_reports.settings import CallbackWorkerSettings, ReconcilerSettings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"

Manifest = dict[str, Any]

# The settings each process loads (services/*/main.py), by the container's args.
PROCESS_SETTINGS: dict[tuple[str, ...], tuple[type[BaseSettings], ...]] = {
    ("serve", "ingest-api"): (IngestSettings, KeyRingSettings),
    ("serve", "callback-ingress"): (CallbackIngressSettings, KeyRingSettings),
    ("worker", "gateway"): (GatewayWorkerSettings, KeyRingSettings),
    ("worker", "callback"): (CallbackWorkerSettings, KeyRingSettings),
    ("worker", "reconciler"): (ReconcilerSettings, KeyRingSettings),
    ("worker", "relay"): (KafkaSettings, DatabaseSettings, RelaySettings),
    ("migrate",): (DatabaseSettings,),
    ("topics", "create"): (KafkaSettings,),
}

# The topic and the consumer group each KEDA-scaled worker reads.
SCALED_WORKERS: dict[str, tuple[str, str]] = {
    "paystream-gateway-worker": (
        topics.COMMANDS,
        str(GatewayWorkerSettings.model_fields["worker_group"].default),
    ),
    "paystream-callback-worker": (
        topics.CALLBACKS,
        str(CallbackWorkerSettings.model_fields["callback_worker_group"].default),
    ),
}


def load_yaml(path: Path) -> list[Manifest]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def kustomization(directory: Path) -> Manifest:
    [doc] = load_yaml(directory / "kustomization.yaml")
    return doc


def base_objects() -> list[Manifest]:
    return [doc for name in kustomization(BASE)["resources"] for doc in load_yaml(BASE / name)]


def of_kind(kind: str) -> list[Manifest]:
    return [doc for doc in base_objects() if doc["kind"] == kind]


def config_literals(directory: Path) -> dict[str, str]:
    """The paystream-config ConfigMap's values as the kustomization generates them."""
    values: dict[str, str] = {}
    for generator in kustomization(directory).get("configMapGenerator", []):
        if generator["name"] == "paystream-config":
            values.update(literal.split("=", 1) for literal in generator["literals"])
    return values


def pod_templates() -> Iterator[tuple[str, Manifest]]:
    for doc in base_objects():
        if doc["kind"] in ("Deployment", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]


def containers() -> Iterator[tuple[str, Manifest]]:
    for name, template in pod_templates():
        for container in template["spec"]["containers"]:
            yield f"{name}/{container['name']}", container


def by_name(pairs: Iterator[tuple[str, Manifest]]) -> list[Any]:
    """Parameters named after the object, so a failure says which one."""
    return [pytest.param(name, obj, id=name) for name, obj in pairs]


def setting_names(*classes: type[BaseSettings]) -> set[str]:
    return {
        f"{cls.model_config.get('env_prefix', '')}{field}".upper()
        for cls in classes
        for field in cls.model_fields
    }


def test_every_manifest_file_is_a_resource_of_the_base() -> None:
    """A file kustomize does not list is never applied nor checked."""
    listed = set(kustomization(BASE)["resources"])
    on_disk = {path.name for path in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    assert not list(K8S.glob("*.yaml")), "manifests belong in base/ or an overlay"


@pytest.mark.parametrize(("name", "template"), by_name(pod_templates()))
def test_pods_run_unprivileged(name: str, template: Manifest) -> None:
    spec = template["spec"]
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] != 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    # Service links would inject PAYSTREAM_<SERVICE>_PORT=tcp://... next to the settings.
    assert spec["enableServiceLinks"] is False
    for container in spec["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize(("name", "template"), by_name(pod_templates()))
def test_tmp_is_writable_on_a_read_only_root(name: str, template: Manifest) -> None:
    """faust keeps its data directory under /tmp (tempfile.mkdtemp), as may any library."""
    spec = template["spec"]
    scratch = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    for container in spec["containers"]:
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts.get("/tmp") in scratch


@pytest.mark.parametrize(("name", "container"), by_name(containers()))
def test_containers_have_requests_and_limits(name: str, container: Manifest) -> None:
    resources = container["resources"]
    for bound in ("requests", "limits"):
        assert set(resources[bound]) == {"cpu", "memory"}, bound


@pytest.mark.parametrize(("name", "container"), by_name(containers()))
def test_environment_names_are_settings_of_the_process(name: str, container: Manifest) -> None:
    """A misspelt PAYSTREAM_ variable is ignored by pydantic-settings: the health server
    would stay off and the probes would restart a healthy pod forever."""
    known = setting_names(*PROCESS_SETTINGS[tuple(container["args"])])
    for variable in container.get("env", []):
        assert variable["name"] in known, variable["name"]


def test_config_map_values_are_kafka_settings() -> None:
    known = setting_names(KafkaSettings)
    for directory in (BASE, OVERLAY):
        assert set(config_literals(directory)) <= known


@pytest.mark.parametrize(("name", "container"), by_name(containers()))
def test_probes_use_the_served_port(name: str, container: Manifest) -> None:
    ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
    env = {v["name"]: v.get("value") for v in container.get("env", [])}
    for port in ports.values():
        # The process listens where its *_PORT setting says (checked above to be real).
        assert any(k.endswith("_PORT") and v == str(port) for k, v in env.items()), port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe in container:
            assert container[probe]["httpGet"]["port"] in ports


def test_http_services_are_reachable_and_only_ready_when_their_dependencies_are() -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    services = of_kind("Service")
    assert {s["metadata"]["name"] for s in services} == {
        "paystream-ingest-api",
        "paystream-callback-ingress",
    }
    for service in services:
        template = deployments[service["metadata"]["name"]]["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        [container] = template["spec"]["containers"]
        names = {port["name"] for port in container["ports"]}
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= names
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_every_deployment_has_a_disruption_budget_that_never_blocks_a_drain() -> None:
    budgets = {b["metadata"]["name"]: b["spec"] for b in of_kind("PodDisruptionBudget")}
    for deployment in of_kind("Deployment"):
        budget = budgets[deployment["metadata"]["name"]]
        assert budget["selector"] == deployment["spec"]["selector"]
        assert budget == {"maxUnavailable": 1, "selector": budget["selector"]}


def test_scaling_stops_at_the_partition_count() -> None:
    """Kafka gives each partition to one consumer of a group: replicas beyond the partition
    count would sit idle (and KEDA's own bound would differ from the manifest's)."""
    partitions = int(config_literals(BASE)["PAYSTREAM_TOPIC_PARTITIONS"])
    assert "PAYSTREAM_TOPIC_PARTITIONS" not in config_literals(OVERLAY)
    scaled = of_kind("ScaledObject")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == set(SCALED_WORKERS)
    prefix = config_literals(BASE)["PAYSTREAM_TOPIC_PREFIX"]
    for obj in scaled:
        spec = obj["spec"]
        # KEDA's CRD checks this with a CEL rule, which the vendored JSON Schema cannot.
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] == partitions
        topic, group = SCALED_WORKERS[spec["scaleTargetRef"]["name"]]
        [trigger] = spec["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["topic"] == f"{prefix}.{topic}"
        assert trigger["metadata"]["consumerGroup"] == group
        assert trigger["metadata"]["bootstrapServersFromEnv"] == "PAYSTREAM_KAFKA_BOOTSTRAP"


def test_autoscaled_deployments_leave_the_replica_count_to_keda() -> None:
    """A `replicas` in the manifest or the overlay would reset KEDA's count on each apply."""
    for deployment in of_kind("Deployment"):
        if deployment["metadata"]["name"] in SCALED_WORKERS:
            assert "replicas" not in deployment["spec"]
    overlay_replicas = {r["name"] for r in kustomization(OVERLAY).get("replicas", [])}
    assert not overlay_replicas & set(SCALED_WORKERS)
    assert overlay_replicas <= {d["metadata"]["name"] for d in of_kind("Deployment")}


def test_the_overlay_image_replaces_the_base_image() -> None:
    """kustomize leaves an image it has no entry for untouched: a misspelt name would ship
    the placeholder."""
    used = {container["image"] for _, container in containers()}
    assert used == {image["name"] for image in kustomization(OVERLAY)["images"]}
