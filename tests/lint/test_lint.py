"""Static checks: linters, and the fixed layout and names the audit checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stack import ROOT, SERVICES, VOLUMES, run

DOCKERFILES = sorted((ROOT / "images").glob("*/Dockerfile"))
SHELL_SCRIPTS = [*sorted(ROOT.glob("scripts/**/*.sh")), *sorted(ROOT.glob("deploy/**/*.sh")), ROOT / ".ci" / "run"]


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (scripts/test.sh installs it)"
    return path


def test_one_dockerfile_per_service_from_bookworm_slim() -> None:
    assert [p.parent.name for p in DOCKERFILES] == sorted(SERVICES)
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


def test_compose_names_images_containers_and_volumes_after_the_services(tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.write_text(
        "".join(
            f"{line.split('=')[0]}=3000\n"
            for line in (ROOT / ".env.example").read_text().splitlines()
            if "=" in line and not line.startswith("#")
        )
    )
    config = json.loads(
        run(
            "docker",
            "compose",
            "--env-file",
            str(env),
            "-f",
            str(ROOT / "docker-compose.yml"),
            "config",
            "--format",
            "json",
        ).stdout
    )
    assert set(config["services"]) == set(SERVICES)
    for name, service in config["services"].items():
        assert service["image"] == name and service["container_name"] == name
        assert service["restart"] == "on-failure"
        if name != "api-gateway-app":
            assert "ports" not in service, name
    assert {v["name"] for v in config["volumes"].values()} == set(VOLUMES)
    assert config["networks"]["backend"]["internal"] is True


def test_env_is_ignored_and_example_holds_no_secret() -> None:
    ignored = run("git", "-C", str(ROOT), "check-ignore", ".env", check=False)
    assert ignored.returncode == 0, ".env must be git-ignored"
    tracked = run("git", "-C", str(ROOT), "ls-files").stdout.split()
    assert ".env" not in tracked
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.split("=")[0].endswith("_PASSWORD"):
            assert line.endswith("="), f"a password value is committed in .env.example: {line}"
