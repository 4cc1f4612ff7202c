"""Fixture: the swarm test stack, deployed once per run by deploy/swarm/swarm.sh under its own name
(PWC_SWARM_STACK, default pwc-swarm-test), secrets, volumes, images and port (PWC_SWARM_PORT, 3400).

If the engine was in no swarm, the run initialises one (deploy/swarm/swarm.sh does) and leaves it at the end;
a swarm that existed before is left as found, apart from the storage label swarm.sh puts on a node.
If the engine is in no swarm and containers other than this run's compose test stack are running (a
user's stack, say), the swarm tests are skipped with that reason, since joining and leaving a swarm
breaks name resolution in running bridge networks on Docker 20.10; PWC_SWARM_FORCE=1 runs them anyway.
Set PWC_KEEP_SWARM=1 to keep the stack (and the swarm) at the end for inspection; the next run
replaces it with a fresh deployment.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from swarm_stack import FIGURES, NAME, REPLICAS, SwarmStack, make_env_file, record, swarm_state

from stack import PROJECT, ROOT, run

# Docker 20.10: `docker swarm init`/`leave` breaks name resolution inside the bridge networks of
# containers that are already running (moby/moby#45144). So a run that has to create the swarm does
# not do it under other people's containers: only this session's own compose test stack may run.
_FORCE = os.environ.get("PWC_SWARM_FORCE") == "1"


def _foreign_containers() -> list[str]:
    out = run("docker", "ps", "--format", '{{.Names}} {{.Label "com.docker.compose.project"}}').stdout
    return [line.split()[0] for line in out.splitlines() if line.split()[1:] != [PROJECT]]


# Why the deployment failed, so that the following tests fail at once instead of deploying again.
_deploy_error: list[str] = []


@pytest.fixture(scope="session")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwarmStack]:
    if _deploy_error:
        pytest.fail(_deploy_error[0])
    state = swarm_state()
    if state not in ("inactive", "active"):
        pytest.fail(f"the Docker engine's swarm state is {state!r}; expected inactive or active")
    foreign = _foreign_containers() if state == "inactive" and not _FORCE else []
    if foreign:
        pytest.skip(
            "not initialising a swarm while other containers run on this engine (joining and leaving a swarm "
            f"breaks their DNS on Docker 20.10, moby/moby#45144): {', '.join(foreign[:6])}; "
            "stop them, or set PWC_SWARM_FORCE=1"
        )
    env_file = tmp_path_factory.mktemp("swarm") / "swarm.env"
    stack = SwarmStack(env_file, make_env_file(env_file))
    keep = os.environ.get("PWC_KEEP_SWARM") == "1"
    started = time.monotonic()
    stack.build_images()
    if state == "active":
        # Leftovers of an earlier run would break the "fresh deployment" assumptions.
        stack.script("down", "--volumes")
    result = stack.script("up", check=False)
    if result.returncode != 0:
        logs = stack.logs()
        _tear_down(stack, state)
        _deploy_error.append(f"the swarm test stack did not converge:\n{result.stdout}\n{result.stderr}\n{logs}")
        pytest.fail(_deploy_error[0])
    record(f"swarm stack {NAME}: images tagged, deployed and converged in {time.monotonic() - started:.0f}s")
    stack.deploy_failures = {name: stack.failed_tasks(name) for name in REPLICAS}
    yield stack
    if not keep:
        _tear_down(stack, state)


def _tear_down(stack: SwarmStack, state_before: str) -> None:
    stack.script("down", "--volumes", check=False)
    stack.remove_images()
    if state_before == "inactive":
        run("docker", "swarm", "leave", "--force", check=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures measured under load (requests sent, failed), also in tests/output/swarm-figures.txt."""
    if not FIGURES:
        return
    terminalreporter.section("swarm figures")
    for line in FIGURES:
        terminalreporter.write_line(line)
    output = ROOT / "tests" / "output"
    output.mkdir(exist_ok=True)
    (output / "swarm-figures.txt").write_text("".join(line + "\n" for line in FIGURES))
