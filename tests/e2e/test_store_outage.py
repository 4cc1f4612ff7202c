"""billing-app and a billing database it cannot use: only a message's own faults are dead-lettered.

A database that refuses every order (a revoked privilege, a changed password) is a store outage: the
orders, all answered 200 by the gateway, wait unacknowledged; billing-app keeps running, says why in
its /health, and stores each of them exactly once when the cause is gone. A message that makes the
consumer's parsing itself fail is dead-lettered alone. Each test restores what it changes and waits
until the stack is healthy again, for the tests that run after it on the same stack.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from test_billing import (
    DLQ,
    QUEUE,
    assert_stored_exactly_once,
    docker_logs_since,
    docker_now,
    order,
    post_orders,
    publish_direct,
    stored_ids,
    supervised_pid,
    wait_depth,
)

from stack import Stack, fresh_user, internal_http, scrape, wait_for

pytestmark = pytest.mark.e2e

HELD_ORDERS = 20


def billing_health(stack: Stack) -> tuple[int, dict[str, Any]]:
    answer = internal_http(stack, "billing-app", "GET", "/health")
    return answer.status, answer.json()


def wait_health(stack: Stack, status: int, checks: dict[str, str], timeout: float = 60) -> dict[str, Any]:
    """billing-app's /health once it answers ``status`` with (at least) these ``checks``."""
    last: list[Any] = []

    def matches() -> dict[str, Any] | None:
        last[:] = billing_health(stack)
        code, body = last
        seen = body.get("checks", {})
        return body if code == status and all(seen.get(k) == v for k, v in checks.items()) else None

    try:
        return wait_for(matches, timeout, interval=1, what=f"billing-app /health {status} {checks}")
    except AssertionError:
        raise AssertionError(f"billing-app /health is {last}, expected {status} with {checks}") from None


def outage_warnings(stack: Stack, since: str) -> int:
    return len(re.findall(r"billing database cannot store orders", docker_logs_since(stack, "billing-app", since)))


def billing_app_processes(stack: Stack) -> dict[str, Any]:
    """What changes if billing-app or one of its programs restarts."""
    return {
        "restarts": stack.inspect("billing-app", "{{.RestartCount}}"),
        "started": stack.inspect("billing-app", "{{.State.StartedAt}}"),
        "consumer": supervised_pid(stack, "consumer"),
        "api": supervised_pid(stack, "api:api-0"),
    }


def orders_held_through_an_outage(
    stack: Stack, cause: Callable[[], object], repair: Callable[[], object], failing: dict[str, str]
) -> tuple[dict[str, Any], str]:
    """``cause`` an outage, post orders (each answered 200), and check while it lasts that they wait in the
    queue, none stored or dead-lettered, billing-app running and its /health failing with ``failing``;
    ``repair`` it, then check that each order is stored exactly once and all is as before.
    Returns /health during the outage, and the time it began (for ``docker logs --since``)."""
    user = fresh_user()
    wait_depth(stack, QUEUE, 0)
    dlq_before = stack.queue_depth(DLQ)
    before = billing_app_processes(stack)
    assert before["consumer"] and before["api"]
    since = docker_now()
    cause()
    try:
        message_ids = post_orders(stack, user, HELD_ORDERS)
        health = wait_health(stack, 503, failing)
        wait_depth(stack, QUEUE, HELD_ORDERS)
        assert stored_ids(stack, user) == []
        assert stack.queue_depth(DLQ) == dlq_before
        assert billing_app_processes(stack) == before, "billing-app keeps running"
        assert scrape(stack, "billing-consumer").value("billing_store_outage") == 1
    finally:
        repair()
    assert_stored_exactly_once(stack, user, message_ids, timeout=60)
    wait_health(stack, 200, {"store": "ok", "database": "ok", "consumer": "ok"})
    assert scrape(stack, "billing-consumer").value("billing_store_outage") == 0
    wait_depth(stack, QUEUE, 0)
    assert stack.queue_depth(DLQ) == dlq_before
    assert billing_app_processes(stack) == before
    stack.wait_healthy()
    return health, since


def test_orders_refused_by_a_revoked_privilege_wait_are_reported_and_are_stored_once_it_is_granted(
    stack: Stack,
) -> None:
    role = stack.env["BILLING_DB_USER"]

    def revoke() -> None:
        stack.psql("billing-db", f'REVOKE INSERT ON orders FROM "{role}"')

    def grant() -> None:
        # Retried more than once before the privilege comes back, and still nothing dead-lettered.
        wait_for(lambda: outage_warnings(stack, since) >= 3, 60, what="the consumer to retry the write")
        stack.psql("billing-db", f'GRANT INSERT ON orders TO "{role}"')

    since = docker_now()
    health, since = orders_held_through_an_outage(stack, revoke, grant, {"store": "failing", "database": "ok"})
    print(f"\nbilling-app /health during the outage: {health}")
    assert "permission denied" in health["details"]["store"] and "42501" in health["details"]["store"]
    assert "billing database stores orders again" in docker_logs_since(stack, "billing-app", since)


def test_a_wrong_database_password_makes_billing_app_wait_and_report_then_resume_once_it_is_right(
    stack: Stack,
) -> None:
    role = stack.env["BILLING_DB_USER"]

    def wrong_password() -> None:
        stack.psql("billing-db", f"ALTER ROLE \"{role}\" PASSWORD '{secrets.token_hex(16)}'")
        # The connections billing-app holds are closed: it has to log in again, with the old password.
        stack.psql(
            "billing-db", f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '{role}'"
        )

    def right_password() -> None:
        stack.psql("billing-db", f"ALTER ROLE \"{role}\" PASSWORD '{stack.env['BILLING_DB_PASSWORD']}'")

    health, _ = orders_held_through_an_outage(
        stack, wrong_password, right_password, {"store": "failing", "database": "unreachable"}
    )
    print(f"\nbilling-app /health with a wrong password: {health}")
    for check in ("store", "database"):
        assert "password authentication failed" in health["details"][check], health
        assert "28P01" in health["details"][check], health


def test_a_message_that_makes_parsing_fail_is_dead_lettered_alone_without_restarting_the_consumer(
    stack: Stack,
) -> None:
    """A user_id of 5000 digits: converting it to int raises ValueError (Python's 4300-digit limit)."""
    user = fresh_user()
    poison = str(uuid.uuid4())
    valid = [str(uuid.uuid4()) for _ in range(4)]
    dlq_before = stack.queue_depth(DLQ)
    consumer = supervised_pid(stack, "consumer")
    since = docker_now()
    messages = [{"body": json.dumps(order(user)), "message_id": mid} for mid in valid]
    messages.insert(2, {"body": json.dumps(order("1" * 5000)), "message_id": poison})
    publish_direct(stack, messages)
    assert_stored_exactly_once(stack, user, valid, timeout=60)
    wait_depth(stack, DLQ, dlq_before + 1)
    assert f"rejecting message {poison} to the dead-letter queue" in docker_logs_since(stack, "billing-app", since)
    assert supervised_pid(stack, "consumer") == consumer
    wait_depth(stack, QUEUE, 0)
