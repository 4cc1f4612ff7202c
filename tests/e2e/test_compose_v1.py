"""The audit replayed with Compose v1.29 (`docker-compose`, Debian 12's and Ubuntu 22.04's package), which
auditors type: the same docker-compose.yml, unchanged, on a project of its own (default: the session's
prefix + "-v1" and port + 1), never the session's test stack or a user's stack.

Compose v1 has no `up --wait`: the stack is started with `up -d --build`, then the containers' health is polled.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_audit import an_order_posted_while_billing_app_is_stopped_is_stored_once_it_starts

from stack import MONITORING_SERVICES, ROOT, SERVICES, VOLUMES, Stack, make_env_file, run, wait_for
from stack import PORT as SESSION_PORT
from stack import PROJECT as SESSION_PROJECT

pytestmark = pytest.mark.e2e

PROJECT = os.environ.get("PWC_V1_PREFIX", f"{SESSION_PROJECT}-v1")
PORT = int(os.environ.get("PWC_V1_PORT", str(SESSION_PORT + 1)))
COMPOSE_FILES = ("-f", str(ROOT / "docker-compose.yml"), "-f", str(ROOT / "tests" / "compose.test.yml"))


def require_compose_v1() -> None:
    """Fail (not skip): CI installs Debian's docker-compose, and a missing one must not pass unnoticed."""
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose (Compose v1.29) is not installed: apt-get install docker-compose (.ci/run does)")
    version = run("docker-compose", "version", "--short").stdout.strip()
    if not version.startswith("1."):
        pytest.fail(f"docker-compose here is Compose {version}, not v1.29 (Debian's docker-compose package)")


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_compose_v1()
    env_file = tmp_path_factory.mktemp("compose-v1") / "v1.env"
    stack = Stack(
        env_file,
        make_env_file(env_file, prefix=PROJECT, port=PORT),
        project=PROJECT,
        port=PORT,
        compose_command=("docker-compose",),
    )
    stack.compose("down", "--volumes", "--remove-orphans", check=False)  # leftovers of a run cut short
    try:
        started = time.monotonic()
        up = stack.compose("up", "-d", "--build", check=False)
        if up.returncode != 0:
            pytest.fail(f"docker-compose up -d --build failed:\n{up.stderr[-3000:]}")
        stack.wait_healthy(timeout=300)
        print(f"\nCompose v1 stack {PROJECT} built and healthy in {time.monotonic() - started:.0f}s")
        yield stack
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)


# --- the file itself, as each Compose reads it -----------------------------------------------------


def audited(config: dict[str, Any]) -> dict[str, Any]:
    """What the audit and the services depend on, in one shape for v1's and v2's `config` output."""

    def volume(mount: Any) -> str:
        return mount if isinstance(mount, str) else f"{mount['source']}:{mount['target']}:rw"

    def port(mapping: Any) -> str:
        """[host_ip:]published:target; v1 writes a mapping with a host IP as a string ("ip:9090:9090/tcp")."""
        if isinstance(mapping, str):
            return mapping.removesuffix("/tcp")
        return ":".join(str(mapping[k]) for k in ("host_ip", "published", "target") if mapping.get(k))

    services = {
        name: {
            "image": s["image"],
            "container_name": s["container_name"],
            "restart": s["restart"],
            "profiles": s.get("profiles"),
            "ports": sorted(port(p) for p in s.get("ports", [])),
            "expose": s.get("expose"),
            "volumes": [volume(m) for m in s.get("volumes", [])],
            "networks": sorted(s["networks"]),
            "environment": s.get("environment"),
            "tmpfs": s["tmpfs"],
            "depends_on": {d: c["condition"] for d, c in s.get("depends_on", {}).items()},
            **{key: s.get(key) for key in ("read_only", "cap_drop", "security_opt", "logging", "stop_grace_period")},
        }
        for name, s in config["services"].items()
    }
    networks = {name: bool(n.get("internal")) for name, n in config["networks"].items()}
    volumes = {name: v["name"] for name, v in config["volumes"].items()}
    return {"services": services, "networks": networks, "volumes": volumes}


def test_docker_compose_v1_reads_the_file_as_compose_v2_does(tmp_path: Path) -> None:
    require_compose_v1()
    env_file = tmp_path / "config.env"
    make_env_file(env_file)
    files = ("-f", str(ROOT / "docker-compose.yml"))
    v1 = run("docker-compose", "--env-file", str(env_file), *files, "config", check=False)
    assert v1.returncode == 0, f"docker-compose config refuses docker-compose.yml:\n{v1.stderr}"
    # v1's `config` shows every service, whatever the profiles; v2's only those of the active profiles.
    v2 = run(
        "docker", "compose", "--env-file", str(env_file), *files, "--profile", "monitoring",
        "config", "--format", "json",
    ).stdout  # fmt: skip
    assert audited(yaml.safe_load(v1.stdout)) == audited(json.loads(v2))
    assert set(yaml.safe_load(v1.stdout)["services"]) == {*SERVICES, *MONITORING_SERVICES}


def test_the_example_env_file_names_the_project_play_with_containers(tmp_path: Path) -> None:
    """Not a `name:` key in the file (v1 refuses it): COMPOSE_PROJECT_NAME, which both Composes read."""
    example = [line for line in (ROOT / ".env.example").read_text().splitlines() if not line.startswith("#")]
    assert "COMPOSE_PROJECT_NAME=play-with-containers" in example
    env_file = tmp_path / "example.env"
    env_file.write_text("".join(f"{line}x\n" if line.endswith("=") else f"{line}\n" for line in example))
    v2 = json.loads(
        run(
            "docker", "compose", "--env-file", str(env_file), "-f", str(ROOT / "docker-compose.yml"),
            "config", "--format", "json",
        ).stdout
    )  # fmt: skip
    assert {n["name"] for n in v2["networks"].values()} == {
        "play-with-containers_backend",
        "play-with-containers_edge",
    }


# --- the audit, with docker-compose ----------------------------------------------------------------


def test_the_six_containers_run_healthy_with_their_names_and_images(v1: Stack) -> None:
    names = run(
        "docker", "ps", "--filter", f"label=com.docker.compose.project={PROJECT}", "--format", "{{.Names}} {{.Image}}"
    ).stdout.split("\n")
    assert dict(line.split() for line in names if line) == {v1.container(s): f"{PROJECT}/{s}" for s in SERVICES}
    for service in SERVICES:
        assert v1.health(service) == "healthy", service
    # Without -p, each Compose finds the same six through COMPOSE_PROJECT_NAME in the env file.
    for compose in (["docker-compose"], ["docker", "compose"]):
        ids = run(*compose, "--env-file", str(v1.env_file), *COMPOSE_FILES, "ps", "-q").stdout.split()
        assert len(ids) == len(SERVICES), compose


def test_names_ports_restart_policy_and_hardening_as_in_compose(v1: Stack) -> None:
    for service in SERVICES:
        host = json.loads(v1.inspect(service, "{{ json .HostConfig }}"))
        assert host["RestartPolicy"]["Name"] == "on-failure", service
        assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"], service
        assert host["SecurityOpt"] == ["no-new-privileges:true"], service
        assert host["LogConfig"]["Config"] == {"max-file": "3", "max-size": "10m"}, service
        published = {port: [b["HostPort"] for b in bindings] for port, bindings in (host["PortBindings"] or {}).items()}
        assert published == ({"3000/tcp": [str(PORT)]} if service == "api-gateway-app" else {}), service
    assert v1.inspect("inventory-db", "{{ json .HostConfig.Tmpfs }}") == json.dumps(
        {"/run/postgresql": "uid=999,gid=999,mode=2775", "/tmp": ""}, separators=(",", ":")
    )
    assert v1.inspect("billing-app", "{{ .Config.StopTimeout }}") == "25"
    volumes = set(run("docker", "volume", "ls", "--format", "{{.Name}}").stdout.split())
    assert {f"{PROJECT}-{v}" for v in VOLUMES} <= volumes
    networks = run("docker", "network", "ls", "--filter", f"name={PROJECT}_", "--format", "{{.Name}}").stdout.split()
    assert sorted(networks) == [f"{PROJECT}_backend", f"{PROJECT}_edge"]
    assert run("docker", "network", "inspect", "-f", "{{.Internal}}", f"{PROJECT}_backend").stdout.strip() == "true"


def test_movies_and_billing_answer_200(v1: Stack) -> None:
    answer = v1.http("POST", "/api/movies/", {"title": "Audit movie (v1)", "description": "from docker-compose"})
    assert answer.status == 200, answer.body
    listed = v1.http("GET", "/api/movies/")
    assert listed.status == 200 and "Audit movie (v1)" in [m["title"] for m in listed.json()]
    answer = v1.http("POST", "/api/billing/", {"user_id": "20", "number_of_items": "99", "total_amount": "250"})
    assert answer.status == 200, answer.body
    message_id = str(uuid.UUID(answer.json()["message_id"]))
    wait_for(lambda: len(v1.order_rows(message_id=message_id)) == 1, 30, what="the order row")


def test_order_sent_while_billing_app_is_stopped_is_stored_once_it_starts(v1: Stack) -> None:
    an_order_posted_while_billing_app_is_stopped_is_stored_once_it_starts(
        v1, stop=lambda: v1.compose("stop", "billing-app"), start=lambda: v1.compose("start", "billing-app")
    )
