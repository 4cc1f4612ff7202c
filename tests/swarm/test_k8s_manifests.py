"""The Kubernetes manifests in deploy/k8s/, checked offline: valid against the Kubernetes API schemas
(kubernetes-validate, strict), and the architecture they describe is the one of the stack.
They are not run on a live cluster here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from stack import ROOT

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31.0"
NAMESPACE = "play-with-containers"
# The stand-in value of the committed Secrets.
PLACEHOLDER = "REPLACE_ME"
CPU_AT_60_PERCENT = {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}


def documents() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        found.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return found


def resources(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _path, doc in documents() if doc["kind"] == kind}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload name, its pod spec, container) of every Deployment and StatefulSet."""
    return [
        (name, pod_spec(w), c)
        for kind in ("Deployment", "StatefulSet")
        for name, w in resources(kind).items()
        for c in pod_spec(w)["containers"]
    ]


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_every_resource_lives_in_the_stack_namespace() -> None:
    for path, doc in documents():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{path.name}: {doc['metadata']['name']}"


def test_gateway_and_inventory_are_deployments_autoscaled_from_1_to_3_at_60_percent_cpu() -> None:
    deployments = resources("Deployment")
    autoscalers = resources("HorizontalPodAutoscaler")
    assert set(deployments) == {"api-gateway-app", "inventory-app"}
    for name in deployments:
        assert "replicas" not in deployments[name]["spec"], "the autoscaler owns the replica count"
        spec = autoscalers[name]["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 3)
        assert spec["metrics"] == [
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}},
            }
        ]
        # Utilisation is relative to the CPU request: without one the autoscaler cannot work.
        assert all("cpu" in c["resources"]["requests"] for c in pod_spec(deployments[name])["containers"])


def test_databases_broker_and_billing_are_statefulsets_with_storage_where_data_lives() -> None:
    statefulsets = resources("StatefulSet")
    assert set(statefulsets) == {"inventory-db", "billing-db", "rabbit-queue", "billing-app"}
    mounts = {"inventory-db": "/var/lib/postgresql/data", "billing-db": "/var/lib/postgresql/data"}
    mounts["rabbit-queue"] = "/var/lib/rabbitmq"
    for name, path in mounts.items():
        claims = statefulsets[name]["spec"]["volumeClaimTemplates"]
        assert [c["metadata"]["name"] for c in claims] == ["data"], name
        assert claims[0]["spec"]["accessModes"] == ["ReadWriteOnce"]
        container = pod_spec(statefulsets[name])["containers"][0]
        assert {"name": "data", "mountPath": path} in container["volumeMounts"], name
    assert statefulsets["billing-app"]["spec"]["replicas"] == 2
    services = resources("Service")
    for name, workload in statefulsets.items():
        assert workload["spec"]["serviceName"] in services, name


def test_every_credential_comes_from_a_secret() -> None:
    secrets = resources("Secret")
    assert set(secrets) == {
        "inventory-db-credentials",
        "billing-db-credentials",
        "rabbitmq-gateway-credentials",
        "rabbitmq-billing-credentials",
    }
    for name, spec, container in containers():
        secret_volumes = {v["name"]: v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        assert set(secret_volumes.values()) <= set(secrets), name
        for variable in container.get("env", []):
            key = variable["name"]
            if key.endswith(("_PASSWORD", "_USER")):
                assert variable["valueFrom"]["secretKeyRef"]["name"] in secrets, f"{name}: {key}"
            assert not key.endswith("_PASSWORD"), f"{name}: {key} must be read from a file (*_FILE)"
            if key.endswith("_FILE"):
                mounted = [
                    m["mountPath"]
                    for m in container["volumeMounts"]
                    if m["name"] in secret_volumes and m.get("readOnly")
                ]
                assert any(variable["value"].startswith(m + "/") for m in mounted), f"{name}: {key}"
    # The committed Secrets hold placeholders only; real values are created from .env.
    for secret in secrets.values():
        assert secret["stringData"]["password"] == PLACEHOLDER


def test_apps_are_probed_on_their_health_endpoint() -> None:
    ports = {"inventory-app": 8080, "billing-app": 8080, "api-gateway-app": 3000}
    for name, _spec, container in containers():
        readiness = container["readinessProbe"]
        assert "livenessProbe" in container, name
        if name in ports:
            assert readiness["httpGet"] == {"path": "/health", "port": "http"}, name
            assert {"name": "http", "containerPort": ports[name]} in container["ports"], name
        else:
            assert readiness["exec"]["command"] in (["db-healthcheck.sh"], ["amqp-healthcheck.sh"]), name


def test_services_select_their_pods_and_only_the_gateway_is_exposed() -> None:
    labels = {
        name: w["spec"]["template"]["metadata"]["labels"]
        for kind in ("Deployment", "StatefulSet")
        for name, w in resources(kind).items()
    }
    for name, service in resources("Service").items():
        selector = service["spec"]["selector"]
        assert any(selector.items() <= pod_labels.items() for pod_labels in labels.values()), name
        expected_type = "LoadBalancer" if name == "api-gateway-app" else "ClusterIP"
        assert service["spec"].get("type", "ClusterIP") == expected_type, name
    for name in labels:
        assert name in resources("Service"), f"{name} has no Service of its name"


def test_containers_run_as_non_root_without_privileges() -> None:
    for name, spec, container in containers():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["automountServiceAccountToken"] is False, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
