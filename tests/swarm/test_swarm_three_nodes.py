"""The stack on a simulated three-node swarm (deploy/swarm/nodes.sh: three containers running their own
dockerd, images copied with docker save | docker load): one gateway per node, and a stopped node whose
tasks are rescheduled while the stack keeps answering.

Part of the default run (about three minutes), so the distributed deployment cannot rot silently;
PWC_SWARM_NODES=0 leaves it out of a quick local run, saying so.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from swarm_stack import NAME, SwarmStack, make_env_file, record, swarm_load

from stack import ROOT, http, run, wait_for

pytestmark = [
    pytest.mark.swarm,
    pytest.mark.skipif(
        os.environ.get("PWC_SWARM_NODES") == "0",
        reason="left out by PWC_SWARM_NODES=0 (it runs by default)",
    ),
]

PREFIX = f"{NAME}-nodes"
PORT_BASE = int(os.environ.get("PWC_NODES_PORT_BASE", "3410"))
NODES = ("node1", "node2", "node3")
PORTS = {node: PORT_BASE + i + 1 for i, node in enumerate(NODES)}
VICTIM = "node3"  # not the storage node: databases and broker stay up


class Nodes:
    """The simulated swarm, driven through node1's engine."""

    def __init__(self, env_file: Path) -> None:
        self.env_file = env_file

    def script(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        environ = {
            **os.environ,
            "PWC_NODES_PREFIX": PREFIX,
            "PWC_NODES_PORT_BASE": str(PORT_BASE),
            "PWC_ENV_FILE": str(self.env_file),
            "PWC_STACK": NAME,
            "PWC_IMAGE_PREFIX": f"{NAME}/",
        }
        command = [str(ROOT / "deploy" / "swarm" / "nodes.sh"), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environ)

    @staticmethod
    def docker(*args: str, check: bool = True) -> str:
        return run("docker", "exec", f"{PREFIX}-node1", "docker", *args, check=check).stdout

    def tasks(self, service: str) -> list[tuple[str, str]]:
        """(node, current state) of the tasks of a service meant to run."""
        out = self.docker(
            "service", "ps", "--filter", "desired-state=running", "--format", "{{.Node}}\t{{.CurrentState}}",
            f"{NAME}_{service}",
        )  # fmt: skip
        return [(node, state) for node, state in (line.split("\t", 1) for line in out.splitlines())]

    def running_on(self, service: str) -> list[str]:
        return sorted(node for node, state in self.tasks(service) if state.startswith("Running"))

    def node_status(self, node: str) -> str:
        return self.docker("node", "inspect", "--format", "{{.Status.State}}", node).strip()


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    env_file = tmp_path_factory.mktemp("nodes") / "nodes.env"
    make_env_file(env_file)
    swarm = Nodes(env_file)
    images = SwarmStack(env_file)
    # Tagged already when the single-node swarm tests run in the same session: they remove them.
    built_here = run("docker", "image", "inspect", f"{NAME}/api-gateway-app", check=False).returncode != 0
    images.build_images()
    started = time.monotonic()
    swarm.script("down")  # leftovers of an earlier run
    result = swarm.script("up")
    try:
        if result.returncode != 0:
            pytest.fail(f"the three-node swarm did not come up:\n{result.stdout}\n{result.stderr}")
        record(f"three-node swarm: nodes started, images copied, stack converged in {time.monotonic() - started:.0f}s")
        yield swarm
    finally:
        if os.environ.get("PWC_KEEP_SWARM") != "1":
            swarm.script("down")
            if built_here:
                images.remove_images()


def test_each_node_runs_one_gateway_and_answers_on_its_own_port(nodes: Nodes) -> None:
    assert nodes.running_on("api-gateway-app") == list(NODES)
    assert len(set(nodes.running_on("inventory-app"))) >= 2, "inventory-app replicas spread over the nodes"
    gateways = set()
    for node, port in PORTS.items():
        answer = http("GET", "/api/movies", timeout=15, port=port)
        assert answer.status == 200, node
        gateways.add(answer.headers["x-served-by"])
    assert len(gateways) == 3


def test_a_stopped_node_has_its_tasks_rescheduled_and_the_stack_keeps_answering(nodes: Nodes) -> None:
    on_victim = {s: nodes.running_on(s).count(VICTIM) for s in ("inventory-app", "billing-app", "api-gateway-app")}
    survivors = (PORTS["node1"], PORTS["node2"])
    load = swarm_load(lambda n: ("GET", "/api/movies?limit=5", None), max_requests=40_000, seconds=240, ports=survivors)
    try:
        with load:
            load.wait_sent(100)
            stopped_at = time.monotonic()
            run("docker", "stop", f"{PREFIX}-{VICTIM}")
            wait_for(lambda: nodes.node_status(VICTIM) == "down", 90, 1, f"{VICTIM} to be seen down")
            wait_for(
                lambda: (
                    len(nodes.running_on("inventory-app")) == 3
                    and len(nodes.running_on("billing-app")) == 2
                    and VICTIM not in nodes.running_on("inventory-app") + nodes.running_on("billing-app")
                ),
                120,
                1,
                "the stopped node's tasks to run elsewhere",
            )
            rescheduled_in = time.monotonic() - stopped_at
            during = len(load.snapshot().failures())
            sent_during = load.sent
            load.wait_sent(load.sent + 200)
        result = load.report
        record(
            f"node {VICTIM} stopped (it ran {on_victim}): tasks rescheduled in {rescheduled_in:.0f}s; "
            f"{result.brief()} through node1 and node2 ({during} of {sent_during} failed until rescheduled)"
        )
        assert nodes.running_on("api-gateway-app") == ["node1", "node2"], "one gateway per remaining node"
        # Once the tasks run elsewhere, every request is answered.
        assert len(result.failures()) == during, result.failures()[during:]
    finally:
        run("docker", "start", f"{PREFIX}-{VICTIM}")
        wait_for(lambda: nodes.node_status(VICTIM) == "ready", 120, 1, f"{VICTIM} to rejoin")
        wait_for(lambda: nodes.running_on("api-gateway-app") == list(NODES), 120, 1, "a gateway on every node again")
