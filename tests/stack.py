"""The test stack: a separate compose project (own containers, images, volumes, port) and
helpers to talk to it the way a user or an operator would."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import secrets
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
# Override these to run two test stacks side by side (e.g. PWC_TEST_PREFIX=pwc-test2 PWC_TEST_PORT=3301
# PWC_TEST_PROMETHEUS_PORT=3391).
PROJECT = os.environ.get("PWC_TEST_PREFIX", "pwc-test")
PREFIX = PROJECT + "-"
PORT = int(os.environ.get("PWC_TEST_PORT", "3300"))
# Prometheus's loopback port, used only when a test enables the "monitoring" profile; never a user's 9090.
PROMETHEUS_PORT = int(os.environ.get("PWC_TEST_PROMETHEUS_PORT", "3390"))
SERVICES = ("inventory-db", "billing-db", "rabbit-queue", "inventory-app", "billing-app", "api-gateway-app")
VOLUMES = ("inventory-database", "billing-database", "rabbit-queue", "api-gateway-app")
# Opt-in (compose profile "monitoring"): left out by `compose up`, so not part of the test stack above.
MONITORING_SERVICES = ("prometheus",)
MONITORING_VOLUMES = ("prometheus",)


def run(
    *args: str, check: bool = True, timeout: float = 600, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request_body(body: Any, headers: dict[str, str] | None, raw: bytes | None) -> tuple[bytes | None, dict[str, str]]:
    """The bytes and headers of a request: ``body`` sent as JSON, or ``raw`` bytes as they are."""
    all_headers = dict(headers or {})
    if body is None:
        return raw, all_headers
    all_headers.setdefault("Content-Type", "application/json")
    return json.dumps(body).encode(), all_headers


def http(
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 30,
    port: int = PORT,
) -> Response:
    """One request to a gateway published on 127.0.0.1:``port``; any HTTP status is an answer."""
    data, all_headers = request_body(body, headers, raw)
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return Response(answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())


# One sequence for the whole run, so two callers never get the same user; its random start keeps the
# users of earlier runs on a kept stack (PWC_KEEP_STACK=1) out of the way. Far above the fixed user_ids
# the tests use (the audit's 20 and 22, 424242), below INT_MAX (2147483647) with 147 million to spare.
_users = itertools.count(1_000_000_000 + secrets.randbelow(1_000_000_000))
_users_lock = threading.Lock()


def fresh_user() -> int:
    """A user_id no other caller in this run gets, and no earlier run is likely to have used."""
    with _users_lock:
        return next(_users)


class OrderRow(NamedTuple):
    """A stored order as the checks compare it: its message id, and the request id it carried ("" if none)."""

    message_id: str
    request_id: str


class Operator:
    """What an operator does inside the stack's containers, the same way whether compose or swarm runs
    them: SQL as the local postgres superuser, the broker's queue counters, the stored orders.
    Subclasses say how to run a command in a service's container (:meth:`output`)."""

    env: dict[str, str]

    def output(self, service: str, *command: str, user: str | None = None) -> str:
        """The standard output of ``command`` run in a container of ``service`` (fails on a non-zero exit)."""
        raise NotImplementedError

    def psql(self, service: str, sql: str) -> str:
        """Run SQL as the local postgres superuser (peer auth), the operator's way in."""
        db = self.env["INVENTORY_DB_NAME"] if service == "inventory-db" else self.env["BILLING_DB_NAME"]
        return self.output(
            service, "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql, user="postgres"
        ).strip()

    def queue_stat(self, queue: str, column: str) -> int:
        """One of rabbitmqctl's counters of a queue (``messages``, ``messages_unacknowledged``...)."""
        out = self.output("rabbit-queue", "rabbitmqctl", "-q", "list_queues", "name", column)
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return int(parts[1])
        raise AssertionError(f"queue {queue} not found in:\n{out}")

    def queue_depth(self, queue: str) -> int:
        """Messages in the queue, ready or unacknowledged."""
        return self.queue_stat(queue, "messages")

    def order_rows(self, *, user_id: int | None = None, message_id: str | None = None) -> list[OrderRow]:
        """Every stored order of ``user_id``, or with ``message_id``, in the order they were stored."""
        if (user_id is None) == (message_id is None):
            raise TypeError("order_rows() takes user_id or message_id")
        where = f"user_id = {int(user_id)}" if user_id is not None else f"message_id = '{uuid.UUID(message_id)}'"
        out = self.psql(
            "billing-db",
            f"SELECT message_id, coalesce(request_id, '') FROM orders WHERE {where} ORDER BY id",
        )
        return [OrderRow(*line.split("|", 1)) for line in out.splitlines()]


@dataclass
class Stack(Operator):
    env_file: Path
    env: dict[str, str] = field(default_factory=dict)
    # Another project than the session's (e.g. tests/e2e/test_compose_v1.py): its prefix, port, compose command.
    project: str = PROJECT
    port: int = PORT
    compose_command: tuple[str, ...] = ("docker", "compose")

    # --- compose and docker -----------------------------------------------------------------

    def compose(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return run(
            *self.compose_command,
            "-p",
            self.project,
            "--env-file",
            str(self.env_file),
            "-f",
            str(ROOT / "docker-compose.yml"),
            "-f",
            str(ROOT / "tests" / "compose.test.yml"),
            *args,
            check=check,
            timeout=timeout,
        )

    def container(self, service: str) -> str:
        return f"{self.project}-{service}"

    def inspect(self, service: str, template: str) -> str:
        return run("docker", "inspect", "-f", template, self.container(service)).stdout.strip()

    def health(self, service: str) -> str:
        return self.inspect(service, "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}")

    def wait_healthy(self, *services: str, timeout: float = 180) -> float:
        """Seconds until every service is healthy."""
        started = time.monotonic()
        pending = list(services or SERVICES)
        while pending:
            pending = [
                s
                for s in pending
                if run(
                    "docker", "inspect", "-f", "{{.State.Health.Status}}", self.container(s), check=False
                ).stdout.strip()
                != "healthy"
            ]
            if pending and time.monotonic() - started > timeout:
                raise AssertionError(f"not healthy after {timeout}s: {pending}")
            if pending:
                time.sleep(1)
        return time.monotonic() - started

    def exec(
        self, service: str, *command: str, user: str | None = None, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        user_args = ["-u", user] if user else []
        interactive = ["-i"] if input is not None else []
        return run(
            "docker", "exec", *interactive, *user_args, self.container(service), *command, check=check, input=input
        )

    def output(self, service: str, *command: str, user: str | None = None) -> str:
        return self.exec(service, *command, user=user).stdout

    # --- HTTP through the published port ----------------------------------------------------

    def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        timeout: float = 30,
    ) -> Response:
        return http(method, path, body, headers, raw, timeout, self.port)


# Runs inside an app container (on the backend network; the gateway's by default) to reach an internal
# service directly.
_INTERNAL_CLIENT = """
import base64, json, sys, urllib.error, urllib.request
spec = json.load(sys.stdin)
data = base64.b64decode(spec["body"]) if spec["body"] is not None else None
request = urllib.request.Request(spec["url"], data=data, method=spec["method"], headers=spec["headers"])
try:
    answer = urllib.request.urlopen(request, timeout=30)
except urllib.error.HTTPError as error:
    answer = error
print(json.dumps({"status": answer.status, "headers": dict(answer.headers.items()),
                  "body": base64.b64encode(answer.read()).decode()}))
"""


def internal_http(
    stack: Stack,
    service: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    port: int = 8080,
    via: str = "api-gateway-app",
) -> Response:
    """HTTP straight to an internal service (e.g. inventory-app:8080), from inside the backend network:
    from the container of ``via``, an app (they have Python)."""
    data, all_headers = request_body(body, headers, raw)
    spec = {
        "url": f"http://{service}:{port}{path}",
        "method": method,
        "headers": all_headers,
        "body": base64.b64encode(data).decode() if data is not None else None,
    }
    out = stack.exec(via, "python", "-c", _INTERNAL_CLIENT, input=json.dumps(spec)).stdout
    answer = json.loads(out)
    return Response(
        answer["status"], {k.lower(): v for k, v in answer["headers"].items()}, base64.b64decode(answer["body"])
    )


# Where Prometheus (and the tests) read each service's metrics inside the backend network: the apps'
# own listener (billing-app has two processes: its HTTP API, and its consumer on 9101), the databases'
# exporter, the broker's plugin. Target name -> (service, port).
METRICS_TARGETS = {
    "api-gateway-app": ("api-gateway-app", 9100),
    "inventory-app": ("inventory-app", 9100),
    "billing-app": ("billing-app", 9100),
    "billing-consumer": ("billing-app", 9101),
    "inventory-db": ("inventory-db", 9187),
    "billing-db": ("billing-db", 9187),
    "rabbit-queue": ("rabbit-queue", 15692),
}
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Metrics:
    """A scrape: ``value(name, **labels)`` sums the samples of ``name`` whose labels include ``labels``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            match = _SAMPLE.match(line)
            assert match, f"not a Prometheus sample line: {line!r}"
            labels = dict(_LABEL.findall(match.group(2) or ""))
            self.samples.append((match.group(1), labels, float(match.group(3))))

    def series(self, name: str, **labels: str) -> list[dict[str, str]]:
        return [have for n, have, _ in self.samples if n == name and labels.items() <= have.items()]

    def value(self, name: str, **labels: str) -> float:
        """The sum; 0 for a series not seen yet (a counter before its first event), but the metric
        itself must be in the scrape, so a misspelt name fails."""
        found = [v for n, have, v in self.samples if n == name and labels.items() <= have.items()]
        family = re.sub(r"_(total|count|sum|bucket)$", "", name)
        assert found or f"# TYPE {family} " in self.text, f"no metric {name} in the scrape"
        return sum(found)


def scrape(stack: Stack, target: str) -> Metrics:
    """GET /metrics of ``target`` (a key of METRICS_TARGETS) from inside the backend network."""
    service, port = METRICS_TARGETS[target]
    answer = internal_http(stack, service, "GET", "/metrics", port=port)
    assert answer.status == 200, (target, answer.status, answer.body[:200])
    return Metrics(answer.body.decode())


def make_env_file(
    path: Path, prefix: str = PROJECT, port: int = PORT, prometheus_port: int = PROMETHEUS_PORT
) -> dict[str, str]:
    """A test .env: the example's names with fresh random secrets, the test ports, and the prefix
    that tests/compose.test.yml gives images, containers and volumes ("<prefix>/<service>")."""
    env: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            env[name] = value or secrets.token_hex(16)
    env["GATEWAY_PORT"] = str(port)
    env["PROMETHEUS_PORT"] = str(prometheus_port)
    env["TEST_PREFIX"] = prefix
    # Also the project name: a compose command given this file without -p still never touches a user's stack.
    env["COMPOSE_PROJECT_NAME"] = prefix
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    path.chmod(0o600)
    return env


def wait_for(predicate: Any, timeout: float, interval: float = 0.5, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def movies_locked(stack: Stack, seconds: int) -> Iterator[None]:
    """An operator's transaction holding inventory-db's movies table (ACCESS EXCLUSIVE) for ``seconds``,
    longer than the apps' statement timeout (5 s); entered once the lock is granted, left once it ended."""
    db = stack.env["INVENTORY_DB_NAME"]
    holder = subprocess.Popen(
        ["docker", "exec", "-u", "postgres", stack.container("inventory-db"), "psql", "-X", "-q", "-d", db, "-c",
         f"BEGIN; LOCK TABLE movies IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({seconds}); COMMIT;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        locked = "SELECT count(*) FROM pg_locks WHERE relation = 'movies'::regclass AND granted"
        wait_for(lambda: stack.psql("inventory-db", locked) != "0", 20, what="the lock to be held")
        yield
    finally:
        holder.wait(30)
