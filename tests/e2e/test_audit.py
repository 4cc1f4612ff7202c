"""The public audit (README, "Passing the audit"), replayed step by step against the running test stack."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pytest

from stack import PORT, PREFIX, PROJECT, SERVICES, VOLUMES, Stack, run, wait_for

pytestmark = pytest.mark.e2e


def test_the_six_containers_run_with_their_service_names_and_images(stack: Stack) -> None:
    names = run(
        "docker", "ps", "--filter", f"label=com.docker.compose.project={PROJECT}", "--format", "{{.Names}} {{.Image}}"
    ).stdout.split("\n")
    running = dict(line.split() for line in names if line)
    assert running == {stack.container(s): f"{PROJECT}/{s}" for s in SERVICES}
    for service in SERVICES:
        assert stack.health(service) == "healthy", service


def test_restart_policy_is_on_failure(stack: Stack) -> None:
    for service in SERVICES:
        assert stack.inspect(service, "{{ .HostConfig.RestartPolicy.Name }}") == "on-failure", service


def test_only_the_gateway_publishes_a_port(stack: Stack) -> None:
    for service in SERVICES:
        bindings = json.loads(stack.inspect(service, "{{ json .HostConfig.PortBindings }}")) or {}
        if service == "api-gateway-app":
            assert list(bindings) == ["3000/tcp"]
            assert [b["HostPort"] for b in bindings["3000/tcp"]] == [str(PORT)]
        else:
            assert bindings == {}, f"{service} publishes {bindings}"


def test_the_named_volumes_exist(stack: Stack) -> None:
    volumes = set(run("docker", "volume", "ls", "--format", "{{.Name}}").stdout.split())
    for volume in VOLUMES:
        assert PREFIX + volume in volumes


def test_post_movie_with_trailing_slash_returns_200(stack: Stack) -> None:
    answer = stack.http("POST", "/api/movies/", {"title": "Audit movie", "description": "from the audit"})
    assert answer.status == 200, answer.body
    movie = answer.json()
    assert movie["title"] == "Audit movie" and movie["description"] == "from the audit"
    assert isinstance(movie["id"], int)
    assert answer.headers["content-type"] == "application/json; charset=utf-8"


def test_get_movies_with_trailing_slash_lists_the_new_movie(stack: Stack) -> None:
    answer = stack.http("GET", "/api/movies/")
    assert answer.status == 200
    assert "Audit movie" in [m["title"] for m in answer.json()]


def test_billing_order_is_queued_and_stored(stack: Stack) -> None:
    answer = stack.http("POST", "/api/billing/", {"user_id": "20", "number_of_items": "99", "total_amount": "250"})
    assert answer.status == 200, answer.body
    body = answer.json()
    assert body["status"] == "queued"
    message_id = str(uuid.UUID(body["message_id"]))
    wait_for(lambda: len(stack.order_rows(message_id=message_id)) == 1, 30, what="the order row")
    row = stack.psql(
        "billing-db", f"SELECT user_id, number_of_items, total_amount FROM orders WHERE message_id = '{message_id}'"
    )
    assert row == "20|99|250.00"


def an_order_posted_while_billing_app_is_stopped_is_stored_once_it_starts(
    stack: Stack, stop: Callable[[], object], start: Callable[[], object]
) -> None:
    """The audit's last steps, whichever Compose stops and starts billing-app."""
    stop()
    try:
        answer = stack.http("POST", "/api/billing/", {"user_id": "22", "number_of_items": "3", "total_amount": "12.5"})
        assert answer.status == 200, answer.body
        message_id = answer.json()["message_id"]
        wait_for(lambda: stack.queue_depth("billing_queue") >= 1, 10, what="the message to wait in the queue")
        assert stack.order_rows(message_id=message_id) == []
    finally:
        start()
    wait_for(lambda: len(stack.order_rows(message_id=message_id)) == 1, 60, what="the backlog to be stored")
    # Acknowledged after the commit; the broker's counters catch up within seconds.
    wait_for(lambda: stack.queue_depth("billing_queue") == 0, 30, what="the queue to drain")
    stack.wait_healthy("billing-app")


def test_order_sent_while_billing_app_is_stopped_is_stored_once_it_restarts(stack: Stack) -> None:
    an_order_posted_while_billing_app_is_stopped_is_stored_once_it_starts(
        stack,
        stop=lambda: run("docker", "stop", stack.container("billing-app")),
        start=lambda: run("docker", "start", stack.container("billing-app")),
    )


def test_the_gateway_log_volume_holds_the_requests(stack: Stack) -> None:
    answer = stack.http("GET", "/api/movies", headers={"X-Request-ID": "audit-log-check"})
    assert answer.headers["x-request-id"] == "audit-log-check"

    def access_log() -> str:
        # Read the volume the way an operator would: a throwaway container mounting it read-only.
        return run(
            "docker",
            "run",
            "--rm",
            "--entrypoint",
            "cat",
            "-v",
            f"{PREFIX}api-gateway-app:/logs:ro",
            f"{PROJECT}/api-gateway-app",
            "/logs/access.log",
        ).stdout

    # The lines are written in batches, a fraction of a second after their requests.
    log = wait_for(lambda: "audit-log-check" in (text := access_log()) and text, 10, what="the access line")
    assert "POST /api/billing/ 200" in log


def test_data_survives_down_and_up(stack: Stack) -> None:
    movies_before = stack.http("GET", "/api/movies").json()
    orders_before = stack.psql("billing-db", "SELECT count(*) FROM orders")
    stack.compose("down", "--timeout", "30")
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "300")
    assert stack.http("GET", "/api/movies").json() == movies_before
    assert stack.psql("billing-db", "SELECT count(*) FROM orders") == orders_before
