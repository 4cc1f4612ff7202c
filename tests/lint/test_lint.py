"""Static checks: linters, and the fixed layout and names the audit checks."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from stack import MONITORING_SERVICES, MONITORING_VOLUMES, ROOT, SERVICES, VOLUMES, make_env_file, run

DOCKERFILES = sorted((ROOT / "images").glob("*/Dockerfile"))
SHELL_SCRIPTS = [*sorted(ROOT.glob("scripts/**/*.sh")), *sorted(ROOT.glob("deploy/**/*.sh")), ROOT / ".ci" / "run"]


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (scripts/test.sh installs it)"
    return path


def test_one_dockerfile_per_service_from_bookworm_slim() -> None:
    assert [p.parent.name for p in DOCKERFILES] == sorted((*SERVICES, *MONITORING_SERVICES))
    for dockerfile in DOCKERFILES:
        froms = [line.split()[1] for line in dockerfile.read_text().splitlines() if line.upper().startswith("FROM ")]
        assert froms == ["debian:bookworm-slim"], dockerfile


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint(dockerfile: Path) -> None:
    result = run(tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck() -> None:
    result = run(tool("shellcheck"), "--external-sources", *map(str, SHELL_SCRIPTS), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff() -> None:
    result = run(tool("ruff"), "check", str(ROOT), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(
        tool("ruff"), "format", "--check", str(ROOT / "apps"), str(ROOT / "tests"), str(ROOT / "bench"), check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def compose_config(env: Path, *options: str, files: tuple[str, ...] = ("docker-compose.yml",)) -> dict[str, Any]:
    """The compose file(s) as Compose v2 resolves them with the env file ``env``."""
    paths = [arg for name in files for arg in ("-f", str(ROOT / name))]
    return json.loads(
        run("docker", "compose", "--env-file", str(env), *paths, *options, "config", "--format", "json").stdout
    )


def every_variable_env(tmp_path: Path) -> Path:
    """An env file setting every variable of .env.example (to 3000: a valid value for each)."""
    env = tmp_path / "env"
    env.write_text(
        "".join(
            f"{line.split('=')[0]}=3000\n"
            for line in (ROOT / ".env.example").read_text().splitlines()
            if "=" in line and not line.startswith("#")
        )
    )
    return env


def test_compose_names_images_containers_and_volumes_after_the_services(tmp_path: Path) -> None:
    # The six only: prometheus is opt-in (profile "monitoring").
    config = compose_config(every_variable_env(tmp_path))
    assert set(config["services"]) == set(SERVICES)
    for name, service in config["services"].items():
        assert service["image"] == name and service["container_name"] == name
        assert service["restart"] == "on-failure"
        if name != "api-gateway-app":
            assert "ports" not in service, name
    assert {v["name"] for v in config["volumes"].values()} == set(VOLUMES)
    assert config["networks"]["backend"]["internal"] is True


def test_prometheus_is_opt_in_hardened_and_published_on_the_loopback_only(tmp_path: Path) -> None:
    config = compose_config(every_variable_env(tmp_path), "--profile", "monitoring")
    assert set(config["services"]) == {*SERVICES, *MONITORING_SERVICES}
    assert {v["name"] for v in config["volumes"].values()} == {*VOLUMES, *MONITORING_VOLUMES}
    prometheus = config["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert prometheus["image"] == prometheus["container_name"] == "prometheus"
    assert prometheus["restart"] == "on-failure" and prometheus["read_only"] is True
    assert prometheus["cap_drop"] == ["ALL"] and prometheus["security_opt"] == ["no-new-privileges:true"]
    assert prometheus["tmpfs"] == ["/tmp"]
    assert [(m["source"], m["target"]) for m in prometheus["volumes"]] == [("prometheus", "/var/lib/prometheus")]
    assert set(prometheus["networks"]) == {"backend", "edge"}
    # No authentication: never on all interfaces.
    assert [(p["host_ip"], p["published"], p["target"]) for p in prometheus["ports"]] == [("127.0.0.1", "3000", 9090)]


def test_the_test_stack_leaves_prometheus_out_and_gives_it_the_test_names(tmp_path: Path) -> None:
    env = tmp_path / "test.env"
    settings = make_env_file(env)
    files = ("docker-compose.yml", "tests/compose.test.yml")
    assert set(compose_config(env, files=files)["services"]) == set(SERVICES)
    config = compose_config(env, "--profile", "monitoring", files=files)
    prometheus = config["services"]["prometheus"]
    prefix = settings["TEST_PREFIX"]
    assert prometheus["image"] == f"{prefix}/prometheus" and prometheus["container_name"] == f"{prefix}-prometheus"
    assert config["volumes"]["prometheus"]["name"] == f"{prefix}-prometheus"
    # Never a user's 9090 (nor their gateway's 3000).
    assert [(p["host_ip"], p["published"]) for p in prometheus["ports"]] == [("127.0.0.1", settings["PROMETHEUS_PORT"])]
    assert settings["PROMETHEUS_PORT"] not in ("9090", settings["GATEWAY_PORT"])


def test_the_start_order_is_declared_and_waits_for_no_healthcheck(tmp_path: Path) -> None:
    """Each app is started after what it uses, but not held back until that is healthy: the apps wait for their
    database and broker by themselves (README, "Start-up and healthchecks")."""
    config = compose_config(every_variable_env(tmp_path))
    order = {
        name: {d: c["condition"] for d, c in s.get("depends_on", {}).items()} for name, s in config["services"].items()
    }
    assert order == {
        "inventory-db": {},
        "billing-db": {},
        "rabbit-queue": {},
        "inventory-app": {"inventory-db": "service_started"},
        "billing-app": {"billing-db": "service_started", "rabbit-queue": "service_started"},
        "api-gateway-app": {
            "rabbit-queue": "service_started",
            "inventory-app": "service_started",
            "billing-app": "service_started",
        },
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_each_healthcheck_retries_during_its_start_period_only_and_within_its_timeout(dockerfile: Path) -> None:
    """--start-wait (scripts/image/healthcheck-start.sh) is the start period; a probe may wait 20 s and then make a
    last try of at most 3 s, so Docker's timeout must leave it that time."""
    line = next(line for line in dockerfile.read_text().splitlines() if line.startswith("HEALTHCHECK "))
    options = dict(re.findall(r"--([a-z-]+)=(\d+)s?\b", line.split(" CMD ", 1)[0]))
    command = json.loads(line.split(" CMD ", 1)[1])
    assert options["interval"] == "5", line
    assert command[1] == f"--start-wait={options['start-period']}", line
    wait = int(
        re.search(r"START_PROBE_MAX_SECONDS=(\d+)", (ROOT / "scripts/image/healthcheck-start.sh").read_text())[1]
    )
    assert int(options["timeout"]) >= wait + 2 * 3 + 1, line


def test_env_is_ignored_and_example_holds_no_secret() -> None:
    ignored = run("git", "-C", str(ROOT), "check-ignore", ".env", check=False)
    assert ignored.returncode == 0, ".env must be git-ignored"
    tracked = run("git", "-C", str(ROOT), "ls-files").stdout.split()
    assert ".env" not in tracked
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.split("=")[0].endswith("_PASSWORD"):
            assert line.endswith("="), f"a password value is committed in .env.example: {line}"
