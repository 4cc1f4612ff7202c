"""The test stack: a separate compose project (own containers, images, volumes, port) and
helpers to talk to it the way a user or an operator would."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Override both to run two test stacks side by side (e.g. PWC_TEST_PREFIX=pwc-test2 PWC_TEST_PORT=3301).
PROJECT = os.environ.get("PWC_TEST_PREFIX", "pwc-test")
PREFIX = PROJECT + "-"
PORT = int(os.environ.get("PWC_TEST_PORT", "3300"))
SERVICES = ("inventory-db", "billing-db", "rabbit-queue", "inventory-app", "billing-app", "api-gateway-app")
VOLUMES = ("inventory-database", "billing-database", "rabbit-queue", "api-gateway-app")


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


@dataclass
class Stack:
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

    def psql(self, service: str, sql: str) -> str:
        """Run SQL as the local postgres superuser (peer auth), the operator's way in."""
        db = self.env["INVENTORY_DB_NAME"] if service == "inventory-db" else self.env["BILLING_DB_NAME"]
        return self.exec(
            service, "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql, user="postgres"
        ).stdout.strip()

    def queue_depth(self, queue: str) -> int:
        out = self.exec("rabbit-queue", "rabbitmqctl", "-q", "list_queues", "name", "messages").stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return int(parts[1])
        raise AssertionError(f"queue {queue} not found in:\n{out}")

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
        data, all_headers = request_body(body, headers, raw)
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method, headers=all_headers
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return Response(answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read())
        except urllib.error.HTTPError as error:
            return Response(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())


# Runs inside the gateway container (on the backend network) to reach an internal app directly.
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
) -> Response:
    """HTTP straight to an internal app (e.g. inventory-app:8080), from inside the backend network."""
    data, all_headers = request_body(body, headers, raw)
    spec = {
        "url": f"http://{service}:{port}{path}",
        "method": method,
        "headers": all_headers,
        "body": base64.b64encode(data).decode() if data is not None else None,
    }
    out = stack.exec("api-gateway-app", "python", "-c", _INTERNAL_CLIENT, input=json.dumps(spec)).stdout
    answer = json.loads(out)
    return Response(
        answer["status"], {k.lower(): v for k, v in answer["headers"].items()}, base64.b64decode(answer["body"])
    )


def make_env_file(path: Path, prefix: str = PROJECT, port: int = PORT) -> dict[str, str]:
    """A test .env: the example's names with fresh random secrets, the test port, and the prefix
    that tests/compose.test.yml gives images, containers and volumes ("<prefix>/<service>")."""
    env: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            env[name] = value or secrets.token_hex(16)
    env["GATEWAY_PORT"] = str(port)
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
