"""The swarm test stack (deploy/swarm/swarm.sh with its own stack name, secrets, volumes, images and port)
and a bounded HTTP load generator to measure what clients see while tasks die or are replaced."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import stack
from stack import ROOT, Response, run, wait_for

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
class SwarmStack:
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

    def exec(self, name: str, *command: str, user: str | None = None) -> str:
        user_args = ["-u", user] if user else []
        container = self.containers(name)[0]
        return run("docker", "exec", *user_args, container, *command).stdout

    def psql(self, name: str, sql: str) -> str:
        """SQL as the local postgres superuser (peer auth), the operator's way in."""
        db = self.env["INVENTORY_DB_NAME"] if name == "inventory-db" else self.env["BILLING_DB_NAME"]
        return self.exec(
            name, "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql, user="postgres"
        ).strip()

    def queue_depth(self, queue: str) -> int:
        for line in self.exec("rabbit-queue", "rabbitmqctl", "-q", "list_queues", "name", "messages").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return int(parts[1])
        raise AssertionError(f"queue {queue} not found")

    # --- HTTP through the published port ---------------------------------------------------

    def http(self, method: str, path: str, body: Any = None, timeout: float = 15) -> Response:
        return http(method, path, body, timeout)


def http(method: str, path: str, body: Any = None, timeout: float = 15, port: int = PORT) -> Response:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return Response(answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())


# --- bounded load -----------------------------------------------------------------------------

# (method, path, body) of the n-th request of the run.
RequestMaker = Callable[[int], tuple[str, str, Any]]


@dataclass
class LoadResult:
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    served_by: Counter[str] = field(default_factory=Counter)
    upstream_served_by: Counter[str] = field(default_factory=Counter)
    answers: list[Response] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.sent} requests, {len(self.failures)} failed"


class Load:
    """``clients`` threads sending requests to 127.0.0.1 until stopped, or until ``max_requests`` in all
    or ``max_seconds`` have passed, whichever comes first. Any answer but a 200 is a failure.
    With several ``ports``, the n-th request goes to ``ports[n % len(ports)]``."""

    def __init__(
        self,
        make_request: RequestMaker,
        clients: int = 4,
        max_requests: int = 20_000,
        max_seconds: float = 240,
        pause: float = 0.02,
        keep_answers: bool = False,
        ports: tuple[int, ...] = (PORT,),
    ) -> None:
        self.make_request = make_request
        self.ports = ports
        self.max_requests = max_requests
        self.deadline = time.monotonic() + max_seconds
        self.pause = pause
        self.keep_answers = keep_answers
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        return self.result

    @property
    def sent(self) -> int:
        return self.result.sent

    def wait_sent(self, count: int, timeout: float = 120) -> None:
        wait_for(lambda: self.result.sent >= count or self.finished, timeout, 0.2, f"{count} requests sent")

    def wait_finished(self, timeout: float) -> None:
        wait_for(lambda: self.finished, timeout, 0.2, "the load to finish")

    @property
    def finished(self) -> bool:
        return not any(thread.is_alive() for thread in self._threads)

    def _next(self) -> int | None:
        with self._lock:
            if self._stop.is_set() or self.result.sent >= self.max_requests or time.monotonic() > self.deadline:
                return None
            self.result.sent += 1
            return self.result.sent

    def _client(self) -> None:
        while (number := self._next()) is not None:
            method, path, body = self.make_request(number)
            try:
                answer = http(method, path, body, port=self.ports[number % len(self.ports)])
            except (OSError, urllib.error.URLError) as exc:
                self._record(f"{method} {path}: {exc!r}", None)
            else:
                failure = None if answer.status == 200 else f"{method} {path}: {answer.status} {answer.body[:200]!r}"
                self._record(failure, answer)
            time.sleep(self.pause)

    def _record(self, failure: str | None, answer: Response | None) -> None:
        with self._lock:
            if failure is not None:
                self.result.failures.append(failure)
            if answer is not None:
                self.result.served_by[answer.headers.get("x-served-by", "?")] += 1
                if "x-upstream-served-by" in answer.headers:
                    self.result.upstream_served_by[answer.headers["x-upstream-served-by"]] += 1
                if self.keep_answers:
                    self.result.answers.append(answer)
