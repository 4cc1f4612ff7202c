"""Several HTTP worker processes per app (HTTP_WORKERS): by default half the CPUs a container may use; with
HTTP_WORKERS=2 every HTTP program runs two supervised processes on one port, each serving requests, the
metrics port shows every worker's series (exact counts, a ``worker`` label), each gateway worker writes its
own access log and holds its own broker connection, and an order is still confirmed and stored.

The test recreates the three apps of the session stack with HTTP_WORKERS=2, then as they were."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator

import pytest

from stack import Stack, fresh_user, run, scrape, wait_for

HTTP_PROGRAMS = {"inventory-app": "inventory-app", "api-gateway-app": "api-gateway-app", "billing-app": "api"}
REQUESTS = 60
# Each request on a new connection: the kernel spreads connections (not requests) over the workers.
DIRECT_GETS = """
import json, sys, urllib.request
statuses = [urllib.request.urlopen(sys.argv[1], timeout=30).status for _ in range(int(sys.argv[2]))]
print(json.dumps(statuses))
"""


def running_workers(stack: Stack, service: str) -> list[str]:
    """The numbers of the RUNNING processes of the service's HTTP program, from supervisor."""
    program = HTTP_PROGRAMS[service]
    status = stack.exec(service, "supervisorctl", "status", check=False).stdout
    return re.findall(rf"^{program}:{program}-(\d+)\s+RUNNING", status, re.MULTILINE)


def recreate_apps(stack: Stack, workers: str | None) -> None:
    lines = [line for line in stack.env_file.read_text().splitlines() if not line.startswith("HTTP_WORKERS=")]
    if workers is not None:
        lines.append(f"HTTP_WORKERS={workers}")
    stack.env_file.write_text("".join(f"{line}\n" for line in lines))
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "300", *HTTP_PROGRAMS)


@pytest.fixture(scope="module")
def two_workers(stack: Stack) -> Iterator[Stack]:
    original = stack.env_file.read_text()
    default = [line.partition("=")[2] for line in original.splitlines() if line.startswith("HTTP_WORKERS=")]
    try:
        recreate_apps(stack, "2")
        yield stack
    finally:
        recreate_apps(stack, default[0] if default else None)
        stack.wait_healthy()


def test_by_default_each_http_program_runs_half_the_cpus_of_its_container(stack: Stack) -> None:
    for service in HTTP_PROGRAMS:
        cpus = int(stack.output(service, "nproc"))  # the compose file sets no CPU quota: the affinity decides
        assert running_workers(stack, service) == [str(n) for n in range(min(4, max(1, cpus // 2)))], service


def test_an_invalid_worker_count_starts_nothing_and_names_the_variable(stack: Stack) -> None:
    image = stack.inspect("inventory-app", "{{.Config.Image}}")
    result = run("docker", "run", "--rm", "-e", "HTTP_WORKERS=many", image, check=False, timeout=60)
    assert result.returncode != 0
    assert "error: HTTP_WORKERS='many' is not 'auto' or an integer in [1, 16]" in result.stderr


def test_two_workers_each_serve_and_the_metrics_count_every_request_once(two_workers: Stack) -> None:
    stack = two_workers
    for service in HTTP_PROGRAMS:
        assert running_workers(stack, service) == ["0", "1"], service
    movie = stack.http("POST", "/api/movies", {"title": "Workers", "description": "two of them"}).json()
    route = {"method": "GET", "route": "/api/movies/{movie_id}", "status": "2xx"}
    before = {target: scrape(stack, target) for target in ("api-gateway-app", "inventory-app")}

    ids = [f"workers-{secrets.token_hex(8)}" for _ in range(REQUESTS)]
    statuses = [stack.http("GET", f"/api/movies/{movie['id']}", headers={"X-Request-ID": i}).status for i in ids]
    direct = stack.exec(
        "api-gateway-app", "python", "-c", DIRECT_GETS, f"http://inventory-app:8080/api/movies/{movie['id']}",
        str(REQUESTS),
    )  # fmt: skip
    assert statuses == [200] * REQUESTS and json.loads(direct.stdout) == [200] * REQUESTS

    for target, expected in (("api-gateway-app", REQUESTS), ("inventory-app", 2 * REQUESTS)):
        after = scrape(stack, target)
        assert after.value("http_worker_up", worker="0") == after.value("http_worker_up", worker="1") == 1
        counted = after.value("http_requests_total", **route) - before[target].value("http_requests_total", **route)
        assert counted == expected, target  # every request once, whichever worker served it
        for worker in ("0", "1"):
            served = after.value("http_requests_total", worker=worker, **route)
            assert served > before[target].value("http_requests_total", worker=worker, **route), (target, worker)

    # Each gateway worker writes its own access log; every request is in exactly one of them.
    def logged() -> dict[str, int] | None:
        files = {name: stack.output("api-gateway-app", "cat", f"/var/log/api-gateway/{name}") for name in
                 ("access.log", "access-1.log")}  # fmt: skip
        counts = {name: sum(text.count(f"{i} ") for i in ids) for name, text in files.items()}
        return counts if sum(counts.values()) == REQUESTS else None

    counts = wait_for(logged, 10, what="the access lines of the requests")
    assert all(counts.values()), counts


def test_each_gateway_worker_has_its_own_broker_connection_and_orders_are_stored(two_workers: Stack) -> None:
    stack = two_workers

    def gateway_connections() -> int:
        users = stack.output("rabbit-queue", "rabbitmqctl", "-q", "list_connections", "user").split()
        return users.count(stack.env["RABBITMQ_GATEWAY_USER"])

    wait_for(lambda: gateway_connections() == 2, 60, what="both gateway workers to connect to the broker")
    user = fresh_user()
    for _ in range(10):
        order = {"user_id": user, "number_of_items": 1, "total_amount": "2.50"}
        assert stack.http("POST", "/api/billing", order).status == 200
    wait_for(lambda: len(stack.order_rows(user_id=user)) == 10, 60, what="the ten orders to be stored")
