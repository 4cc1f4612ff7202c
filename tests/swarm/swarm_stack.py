"""The swarm test stack (deploy/swarm/swarm.sh with its own stack name, secrets, volumes, images and port),
and the bounded load (tests/load.py) that measures what clients see while tasks die or are replaced."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import stack
from load import Load, RequestMaker, numbered
from stack import ROOT, Operator, Response, run, wait_for

# Override to run next to another swarm test stack (e.g. PWC_SWARM_STACK=pwc-swarm-2 PWC_SWARM_PORT=3401).
NAME = os.environ.get("PWC_SWARM_STACK", "pwc-swarm-test")
PORT = int(os.environ.get("PWC_SWARM_PORT", "3400"))
IMAGE_PREFIX = NAME + "/"
IMAGES = ("inventory-db", "billing-db", "rabbit-queue", "inventory-app", "billing-app", "api-gateway-app")
# What deploy/swarm/stack.yml asks for on one node (one gateway per node).
REPLICAS = {
    "inventory-db": 1,
    "billing-db": 1,
    "rabbit-queue": 1,
    "inventory-app": 3,
    "billing-app": 2,
    "api-gateway-app": 1,
}


# Figures measured by the tests, printed at the end of the run (conftest.py).
FIGURES: list[str] = []


def record(line: str) -> None:
    print(line)
    FIGURES.append(line)


def swarm_state() -> str:
    return run("docker", "info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()


def make_env_file(path: Path) -> dict[str, str]:
    """A .env for the swarm test stack: the example's names, fresh random secrets, the test port."""
    return stack.make_env_file(path, prefix=NAME, port=PORT)


@dataclass
class SwarmStack(Operator):
    env_file: Path
    env: dict[str, str] = field(default_factory=dict)
    # Failed or rejected tasks of each service right after the deployment converged.
    deploy_failures: dict[str, set[str]] = field(default_factory=dict)

    # --- deploy/swarm/swarm.sh and images -------------------------------------------------------

    def script(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        environ = {
            **os.environ,
            "PWC_ENV_FILE": str(self.env_file),
            "PWC_STACK": NAME,
            "PWC_IMAGE_PREFIX": IMAGE_PREFIX,
        }
        result = subprocess.run(
            [str(ROOT / "deploy" / "swarm" / "swarm.sh"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environ,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"swarm.sh {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def build_images(self) -> None:
        """The images of docker-compose.yml, tagged for this stack only (layers shared, so cached)."""
        run(
            "docker", "compose", "-p", NAME, "--env-file", str(self.env_file),
            "-f", str(ROOT / "docker-compose.yml"), "-f", str(ROOT / "tests" / "compose.test.yml"),
            "build", "--quiet", timeout=900,
        )  # fmt: skip

    def remove_images(self) -> None:
        run("docker", "rmi", *(IMAGE_PREFIX + image for image in IMAGES), check=False)

    # --- services, tasks and containers ---------------------------------------------------

    @staticmethod
    def service(name: str) -> str:
        return f"{NAME}_{name}"

    def service_json(self, name: str) -> dict[str, Any]:
        return json.loads(run("docker", "service", "inspect", self.service(name)).stdout)[0]

    def containers(self, name: str) -> list[str]:
        """Ids of the running containers of a service on this node."""
        return run(
            "docker", "ps", "--quiet", "--no-trunc", "--filter", "status=running",
            "--filter", f"label=com.docker.swarm.service.name={self.service(name)}",
        ).stdout.split()  # fmt: skip

    def container_json(self, container: str) -> dict[str, Any]:
        return json.loads(run("docker", "inspect", container).stdout)[0]

    def running_tasks(self, name: str) -> list[str]:
        """Current states of the tasks meant to run ("Running ..." once healthy)."""
        out = run(
            "docker", "service", "ps", "--filter", "desired-state=running", "--format", "{{.CurrentState}}",
            self.service(name),
        ).stdout  # fmt: skip
        return out.splitlines()

    def update_state(self, name: str) -> str:
        return run(
            "docker", "service", "inspect", "--format",
            "{{with .UpdateStatus}}{{.State}}{{end}}", self.service(name),
        ).stdout.strip()  # fmt: skip

    def converged(self, name: str, replicas: int) -> bool:
        states = self.running_tasks(name)
        return (
            len(states) == replicas
            and all(s.startswith("Running") for s in states)
            and self.update_state(name) not in ("updating", "rollback_started")
        )

    def wait_converged(self, name: str, replicas: int | None = None, timeout: float = 180) -> float:
        """Seconds until the service runs its replicas, all healthy, with no update in progress."""
        started = time.monotonic()
        wanted = REPLICAS[name] if replicas is None else replicas
        wait_for(lambda: self.converged(name, wanted), timeout, 1, f"{name} to run {wanted} healthy tasks")
        return time.monotonic() - started

    def wait_all_converged(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        for name in REPLICAS:
            self.wait_converged(name, timeout=max(1.0, deadline - time.monotonic()))

    def failed_tasks(self, name: str) -> set[str]:
        """Every task of the service that failed or was rejected, as "<task id> <name> <error>"."""
        out = run(
            "docker", "service", "ps", "--no-trunc", "--format", "{{.ID}}\t{{.Name}}\t{{.CurrentState}}\t{{.Error}}",
            self.service(name),
        ).stdout  # fmt: skip
        return {
            f"{task} {task_name} {error}"
            for task, task_name, state, error in (line.split("\t") for line in out.splitlines())
            if state.startswith(("Failed", "Rejected"))
        }

    def logs(self, tail: int = 30) -> str:
        """The last lines of every service's logs (to explain a failed deployment)."""
        parts = []
        for name in REPLICAS:
            out = run("docker", "service", "logs", "--raw", "--tail", str(tail), self.service(name), check=False)
            parts.append(f"--- {name}\n{out.stdout}{out.stderr}")
        return "\n".join(parts)

    def output(self, service: str, *command: str, user: str | None = None) -> str:
        user_args = ["-u", user] if user else []
        container = self.containers(service)[0]
        return run("docker", "exec", *user_args, container, *command).stdout

    # --- HTTP through the published port ---------------------------------------------------

    def http(self, method: str, path: str, body: Any = None, timeout: float = 15) -> Response:
        return stack.http(method, path, body, timeout=timeout, port=PORT)


def swarm_load(
    make_request: RequestMaker,
    *,
    clients: int = 4,
    max_requests: int = 20_000,
    seconds: float = 240,
    pause: float = 0.02,
    ports: tuple[int, ...] = (PORT,),
) -> Load:
    """The swarm tests' load: ``clients`` threads sending ``make_request(n)`` to 127.0.0.1 (client i to
    ``ports[i % len(ports)]``), each pausing ``pause`` s after every answer, until stopped, ``max_requests``
    or ``seconds``. Any answer but a 200 is a failure (``load.report.failures()``)."""
    return Load(
        [f"http://127.0.0.1:{port}" for port in ports],
        numbered(make_request, pause),
        clients=clients,
        rate=None,
        seconds=seconds,
        max_requests=max_requests,
        timeout=15,
    )
