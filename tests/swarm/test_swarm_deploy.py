"""The stack on a live single-node swarm, as an operator inspects it after deploy/swarm/swarm.sh up:
replicas and health, secrets instead of environment values, the deploy policies, traffic spread."""

from __future__ import annotations

import pytest
from swarm_stack import NAME, REPLICAS, SwarmStack, record, swarm_load

pytestmark = pytest.mark.swarm

SECRET_VARIABLES = (
    "INVENTORY_DB_PASSWORD",
    "BILLING_DB_PASSWORD",
    "RABBITMQ_GATEWAY_PASSWORD",
    "RABBITMQ_BILLING_PASSWORD",
)


def test_every_service_runs_all_its_replicas_healthy(swarm: SwarmStack) -> None:
    for name, replicas in REPLICAS.items():
        assert swarm.converged(name, replicas), f"{name}: {swarm.running_tasks(name)}"
        containers = swarm.containers(name)
        assert len(containers) == replicas, name
        for container in containers:
            state = swarm.container_json(container)["State"]
            # The HEALTHCHECK comes from the image: the stack file defines none.
            assert state["Health"]["Status"] == "healthy", name
        assert "Healthcheck" not in swarm.service_json(name)["Spec"]["TaskTemplate"]["ContainerSpec"], name


def test_no_task_failed_while_the_stack_started_without_any_start_order(swarm: SwarmStack) -> None:
    # Swarm starts every service at once: the apps must wait for their databases and broker themselves.
    assert set(swarm.deploy_failures) == set(REPLICAS)
    assert not any(swarm.deploy_failures.values()), swarm.deploy_failures


def test_passwords_reach_the_services_only_as_secret_files(swarm: SwarmStack) -> None:
    passwords = {swarm.env[name] for name in SECRET_VARIABLES}
    for name in REPLICAS:
        spec = swarm.service_json(name)["Spec"]["TaskTemplate"]["ContainerSpec"]
        environment = spec.get("Env", [])
        assert not any(password in line for line in environment for password in passwords), name
        assert not any(line.split("=", 1)[0].endswith("_PASSWORD") for line in environment), name
        secret_files = [line for line in environment if line.split("=", 1)[0].endswith("_PASSWORD_FILE")]
        assert secret_files, f"{name} reads no secret file"
        assert all(line.split("=", 1)[1].startswith("/run/secrets/") for line in secret_files), name
        for secret in spec["Secrets"]:
            assert secret["SecretName"].startswith(f"{NAME}_"), secret
            assert secret["File"]["Mode"] == 0o400, secret
        container = swarm.container_json(swarm.containers(name)[0])
        assert not any(password in line for line in container["Config"]["Env"] for password in passwords), name


def test_the_secret_files_are_readable_by_the_service_user_only(swarm: SwarmStack) -> None:
    listing = swarm.output("inventory-app", "stat", "-c", "%a %u %n", "/run/secrets/inventory_db_password")
    assert listing.split() == ["400", "10001", "/run/secrets/inventory_db_password"]
    listing = swarm.output("billing-db", "stat", "-c", "%a %u %n", "/run/secrets/billing_db_password")
    assert listing.split() == ["400", "999", "/run/secrets/billing_db_password"]


def test_services_restart_on_failure_and_update_safely(swarm: SwarmStack) -> None:
    for name in REPLICAS:
        spec = swarm.service_json(name)["Spec"]
        assert spec["TaskTemplate"]["RestartPolicy"]["Condition"] == "on-failure", name
        assert spec["UpdateConfig"]["FailureAction"] == "rollback", name
        # No IPVS on this kernel: DNS round robin, never a virtual IP.
        assert spec["EndpointSpec"]["Mode"] == "dnsrr", name
        expected_order = "start-first" if name in ("inventory-app", "billing-app") else "stop-first"
        assert spec["UpdateConfig"]["Order"] == expected_order, name


def test_the_gateway_alone_publishes_its_port_in_host_mode(swarm: SwarmStack) -> None:
    for name in REPLICAS:
        ports = swarm.service_json(name)["Spec"]["EndpointSpec"].get("Ports", [])
        if name == "api-gateway-app":
            assert [(p["TargetPort"], p["PublishedPort"], p["PublishMode"]) for p in ports] == [
                (3000, int(swarm.env["GATEWAY_PORT"]), "host")
            ]
            assert swarm.service_json(name)["Spec"]["TaskTemplate"]["Placement"]["MaxReplicas"] == 1
        else:
            assert ports == [], name


def test_requests_through_the_gateway_are_served_by_every_inventory_replica(swarm: SwarmStack) -> None:
    hostnames = {
        swarm.container_json(c)["Config"]["Hostname"]
        for c in swarm.containers("inventory-app")  # e.g. inventory-app-2: one per task slot
    }
    assert len(hostnames) == 3
    load = swarm_load(lambda n: ("GET", "/api/movies?limit=5", None), clients=8, max_requests=600, seconds=60, pause=0)
    with load:
        load.wait_finished(90)
    result = load.report
    served_by, upstream_served_by = (
        result.header_counts("x-served-by", "?"),
        result.header_counts("x-upstream-served-by"),
    )
    record(f"spread: {result.brief()}; gateway {dict(served_by)}; inventory {dict(upstream_served_by)}")
    assert result.failures() == []
    assert set(served_by) == {swarm.container_json(swarm.containers("api-gateway-app")[0])["Config"]["Hostname"]}
    assert set(upstream_served_by) == hostnames
