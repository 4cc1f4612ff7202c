"""Static checks of the swarm files, beside tests/lint (which lints scripts/**/*.sh, deploy/**/*.sh and
images/*/Dockerfile): the simulated nodes' script and Dockerfile, with the swarm tests that use them."""

from __future__ import annotations

import shutil

from stack import ROOT, run


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (scripts/test.sh installs it)"
    return path


def test_the_nodes_script_is_shellcheck_clean() -> None:
    result = run(tool("shellcheck"), str(ROOT / "deploy" / "swarm" / "nodes.sh"), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_node_dockerfile_is_hadolint_clean() -> None:
    dockerfile = ROOT / "deploy" / "swarm" / "node" / "Dockerfile"
    result = run(tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
