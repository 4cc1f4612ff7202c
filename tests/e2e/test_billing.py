"""Delivery guarantees of the billing pipeline, on the real containers.

Every check counts rows in billing-db with psql and matches them on message_id: an order answered
200 is stored exactly once, whatever is stopped, restarted or killed in between. Each test uses a
fresh random user_id, so the rows of other tests (and of earlier runs on a kept stack) never count.
Tests that stop or kill something restore it and wait until the whole stack is healthy again.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from common.orders import message_id
from stack import ROOT, Response, Stack, fresh_user, internal_http, run, scrape, wait_for

pytestmark = pytest.mark.e2e

QUEUE = "billing_queue"
DLQ = "billing_queue.dlq"
EXCHANGE = "billing"
OUTPUT = ROOT / "tests" / "output"
DRAIN_ORDERS = 10_000


# --- helpers -----------------------------------------------------------------------------------


def order(user_id: int, items: Any = 1, amount: Any = "9.99") -> dict[str, Any]:
    return {"user_id": user_id, "number_of_items": items, "total_amount": amount}


def post_order(stack: Stack, body: Any, headers: dict[str, str] | None = None) -> Response:
    return stack.http("POST", "/api/billing", body, headers=headers)


def post_orders(stack: Stack, user_id: int, count: int, workers: int = 8) -> list[str]:
    """POST ``count`` orders concurrently; every one must be answered 200. Returns their message ids."""

    def one(index: int) -> str:
        answer = post_order(stack, order(user_id, index % 50 + 1, f"{index}.{index % 100:02d}"))
        assert answer.status == 200, (answer.status, answer.body)
        body = answer.json()
        assert body["status"] == "queued"
        return str(uuid.UUID(body["message_id"]))

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(count)))


def stored_ids(stack: Stack, user_id: int) -> list[str]:
    """message_id of every stored order of ``user_id`` (one entry per row)."""
    return [row.message_id for row in stack.order_rows(user_id=user_id)]


def count_rows(stack: Stack, where: str) -> int:
    return int(stack.psql("billing-db", f"SELECT count(*) FROM orders WHERE {where}"))


def assert_stored_exactly_once(stack: Stack, user_id: int, message_ids: list[str], timeout: float = 120) -> None:
    """Wait until every order is stored, then check there is one row per message_id and nothing else."""
    assert len(set(message_ids)) == len(message_ids), "the gateway handed out a message_id twice"
    wait_for(
        lambda: len(stored_ids(stack, user_id)) >= len(message_ids),
        timeout,
        what=f"{len(message_ids)} orders of user {user_id} to be stored",
    )
    rows = stored_ids(stack, user_id)
    assert sorted(rows) == sorted(message_ids), (
        f"{len(rows)} rows for {len(message_ids)} orders; "
        f"missing {set(message_ids) - set(rows)}, unexpected {set(rows) - set(message_ids)}"
    )


def wait_depth(stack: Stack, queue: str, expected: int, timeout: float = 60) -> None:
    """Quorum-queue counters lag a few seconds behind: poll until the depth is ``expected``."""
    last: list[int] = []

    def matches() -> bool:
        last[:] = [stack.queue_depth(queue)]
        return last[0] == expected

    try:
        wait_for(matches, timeout, interval=1, what=f"{queue} to hold {expected} messages")
    except AssertionError:
        raise AssertionError(f"{queue} holds {last} messages, expected {expected}") from None


def docker(*args: str) -> str:
    return run("docker", *args).stdout.strip()


@contextmanager
def stopped(stack: Stack, service: str) -> Iterator[None]:
    """``docker stop`` a service; started again (and the whole stack healthy) on the way out."""
    docker("stop", stack.container(service))
    try:
        yield
    finally:
        docker("start", stack.container(service))
        stack.wait_healthy()


def docker_logs_since(stack: Stack, service: str, since: str) -> str:
    result = run("docker", "logs", "--since", since, stack.container(service))
    return result.stdout + result.stderr


def docker_now() -> str:
    """A timestamp for ``docker logs --since``, one second early to be safe about clock rounding."""
    return str(int(time.time()) - 1)


# Runs in the gateway container (on the backend network, pika installed) with the gateway's own
# broker user, which may only write to the billing exchange. Publishes the given messages (or
# generates ``count`` valid orders of one user) with publisher confirms and mandatory routing,
# up to 1000 unconfirmed at a time, and prints what the broker answered.
_PUBLISH = r"""
import json, os, sys, time, uuid
import pika
from pika.spec import Basic

spec = json.load(sys.stdin)
messages = spec.get("messages", [])
if "generate" in spec:
    body = json.dumps({"user_id": spec["generate"]["user_id"], "number_of_items": 1, "total_amount": "1.00"})
    messages = [{"body": body, "message_id": str(uuid.uuid4())} for _ in range(spec["generate"]["count"])]
credentials = pika.PlainCredentials(os.environ["RABBITMQ_GATEWAY_USER"], os.environ["RABBITMQ_GATEWAY_PASSWORD"])
parameters = pika.ConnectionParameters("rabbit-queue", credentials=credentials)
result = {"acked": 0, "nacked": 0, "returned": 0, "timed_out": False}
pending = set()
state = {"sent": 0, "channel": None, "started": time.monotonic()}

def publish_more():
    channel = state["channel"]
    while state["sent"] < len(messages) and len(pending) < 1000:
        message = messages[state["sent"]]
        properties = pika.BasicProperties(
            content_type=message.get("content_type", "application/json"), delivery_mode=2,
            message_id=message.get("message_id"), headers=message.get("headers"), timestamp=int(time.time()))
        channel.basic_publish(spec["exchange"], spec["routing_key"], message["body"].encode(), properties,
                              mandatory=True)
        state["sent"] += 1
        pending.add(state["sent"])
    if state["sent"] == len(messages) and not pending:
        result["seconds"] = time.monotonic() - state["started"]
        connection.close()

def on_confirm(frame):
    method = frame.method
    done = {t for t in pending if t <= method.delivery_tag} if method.multiple else {method.delivery_tag}
    pending.difference_update(done)
    result["nacked" if isinstance(method, Basic.Nack) else "acked"] += len(done)
    publish_more()

def on_return(channel, method, properties, body):
    result["returned"] += 1

def on_channel(channel):
    state["channel"] = channel
    channel.add_on_return_callback(on_return)
    channel.confirm_delivery(ack_nack_callback=on_confirm, callback=lambda _frame: publish_more())

def give_up():
    result["timed_out"] = True
    connection.close()

connection = pika.SelectConnection(
    parameters,
    on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
    on_open_error_callback=lambda c, error: (result.update(error=repr(error)), c.ioloop.stop()),
    on_close_callback=lambda c, reason: c.ioloop.stop(),
)
connection.ioloop.call_later(spec.get("timeout", 120), give_up)
connection.ioloop.start()
result["message_ids"] = [m.get("message_id") for m in messages]
print(json.dumps(result))
"""


def publish_direct(
    stack: Stack, messages: list[dict[str, Any]] | None = None, generate: dict[str, int] | None = None
) -> dict[str, Any]:
    """Publish straight to the billing exchange as the gateway's broker user (see _PUBLISH)."""
    spec: dict[str, Any] = {"exchange": EXCHANGE, "routing_key": QUEUE, "messages": messages or []}
    if generate is not None:
        spec["generate"] = generate
    out = stack.exec("api-gateway-app", "python", "-c", _PUBLISH, input=json.dumps(spec)).stdout
    result: dict[str, Any] = json.loads(out)
    total = len(result["message_ids"])
    assert result.get("error") is None and not result["timed_out"], result
    assert (result["acked"], result["nacked"], result["returned"]) == (total, 0, 0), result
    return result


def supervised_pid(stack: Stack, program: str) -> int | None:
    """The pid of a RUNNING supervisor program in billing-app, else None."""
    status = stack.exec("billing-app", "supervisorctl", "status", program, check=False).stdout
    match = re.search(rf"^{re.escape(program)}\s+RUNNING\s+pid (\d+),", status, re.MULTILINE)
    return int(match.group(1)) if match else None


@contextmanager
def orders_table_locked(stack: Stack) -> Iterator[None]:
    """Hold a SHARE lock on ``orders`` (reads go on, INSERTs wait) in a separate psql session."""
    name = "billing-test-lock"
    sql = "BEGIN; LOCK TABLE orders IN SHARE MODE; SELECT pg_sleep(300);"
    psql = ["psql", "-X", "-q", "-d", stack.env["BILLING_DB_NAME"], "-c", sql]
    session = subprocess.Popen(
        ["docker", "exec", "-e", f"PGAPPNAME={name}", "-u", "postgres", stack.container("billing-db"), *psql],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: (
                stack.psql(
                    "billing-db",
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                    f"WHERE a.application_name = '{name}' AND l.mode = 'ShareLock' AND l.granted",
                )
                == "1"
            ),
            20,
            what="the lock on orders",
        )
        yield
    finally:
        stack.psql(
            "billing-db", f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}'"
        )
        session.wait(timeout=30)


# --- validation ---------------------------------------------------------------------------------

JSON_ORDER = b'{"user_id": 5, "number_of_items": 1, "total_amount": "1"}'
INVALID_ORDERS: list[tuple[str, str, bytes, int]] = [
    ("missing field", "application/json", b'{"user_id": 5, "number_of_items": 1}', 400),
    ("negative amount", "application/json", b'{"user_id": 5, "number_of_items": 1, "total_amount": "-1.00"}', 400),
    ("negative number", "application/json", b'{"user_id": 5, "number_of_items": 1, "total_amount": -3}', 400),
    ("three decimals", "application/json", b'{"user_id": 5, "number_of_items": 1, "total_amount": "12.345"}', 400),
    ("three decimals number", "application/json", b'{"user_id": 5, "number_of_items": 1, "total_amount": 1.005}', 400),
    ("non-numeric string", "application/json", b'{"user_id": "five", "number_of_items": 1, "total_amount": "1"}', 400),
    ("zero items", "application/json", b'{"user_id": 5, "number_of_items": 0, "total_amount": "1"}', 400),
    ("unknown field", "application/json", JSON_ORDER[:-1] + b', "coupon": "X"}', 400),
    ("malformed JSON", "application/json", b'{"user_id": 5, "number_of_items": 1,', 400),
    ("a JSON array", "application/json", b"[" + JSON_ORDER + b"]", 400),
    ("empty body", "application/json", b"", 400),
    ("wrong content type", "text/plain", JSON_ORDER, 415),
    ("form content type", "application/x-www-form-urlencoded", b"user_id=5&number_of_items=1&total_amount=1", 415),
]


def test_invalid_orders_are_refused_with_a_json_error_and_nothing_is_published(stack: Stack) -> None:
    wait_depth(stack, QUEUE, 0)
    orders_before = count_rows(stack, "true")
    dlq_before = stack.queue_depth(DLQ)
    # With billing-app stopped, anything the gateway published would stay in the queue, visible.
    with stopped(stack, "billing-app"):
        for name, content_type, raw, status in INVALID_ORDERS:
            answer = stack.http("POST", "/api/billing", headers={"Content-Type": content_type}, raw=raw)
            assert answer.status == status, (name, answer.status, answer.body)
            assert answer.headers["content-type"] == "application/json; charset=utf-8", name
            error = answer.json()["error"]
            assert isinstance(error, str) and error, name
        # A valid order sent last: once it shows in the queue, anything sent before it would too.
        marker = post_orders(stack, fresh_user(), 1)
        wait_depth(stack, QUEUE, 1)
    wait_for(lambda: count_rows(stack, f"message_id = '{marker[0]}'") == 1, 60, what="the valid order to be stored")
    assert count_rows(stack, "true") == orders_before + 1
    assert stack.queue_depth(DLQ) == dlq_before


def test_numeric_strings_and_json_numbers_are_both_accepted_and_stored_normalised(stack: Stack) -> None:
    user = fresh_user()
    cases = [
        (order(str(user), "99", "250"), "99|250.00"),  # the audit's form: numeric strings
        (order(user, 3, 12.5), "3|12.50"),
        (order(user, "4", "12.5"), "4|12.50"),
        (order(user, 5, 0), "5|0.00"),
        (order(user, 6, "7.05"), "6|7.05"),
        (order(user, 7.0, 1e2), "7|100.00"),
        (order(user, " 8 ", " 9.9 "), "8|9.90"),
    ]
    expected = {}
    for body, stored in cases:
        answer = post_order(stack, body)
        assert answer.status == 200, (body, answer.body)
        expected[answer.json()["message_id"]] = f"{user}|{stored}"
    assert_stored_exactly_once(stack, user, list(expected), timeout=60)
    rows = stack.psql(
        "billing-db", f"SELECT message_id, user_id, number_of_items, total_amount FROM orders WHERE user_id = {user}"
    )
    assert dict(line.split("|", 1) for line in rows.splitlines()) == expected


# --- the queue keeps orders while billing-app, the broker or the database is away ---------------


def test_orders_sent_while_billing_app_is_stopped_wait_in_the_queue_and_are_stored_once_it_starts(
    stack: Stack,
) -> None:
    user = fresh_user()
    wait_depth(stack, QUEUE, 0)
    with stopped(stack, "billing-app"):
        message_ids = post_orders(stack, user, 50)
        wait_depth(stack, QUEUE, 50)
        assert stored_ids(stack, user) == []
    assert_stored_exactly_once(stack, user, message_ids)
    wait_depth(stack, QUEUE, 0)


def test_queued_orders_survive_a_broker_restart_and_the_gateway_reconnects_by_itself(stack: Stack) -> None:
    user = fresh_user()
    wait_depth(stack, QUEUE, 0)
    gateway_started = stack.inspect("api-gateway-app", "{{.State.StartedAt}}")
    with stopped(stack, "billing-app"):
        message_ids = post_orders(stack, user, 50)
        wait_depth(stack, QUEUE, 50)
        docker("restart", stack.container("rabbit-queue"))
        stack.wait_healthy("rabbit-queue")
        wait_depth(stack, QUEUE, 50)
        # The gateway was not restarted; its publisher reconnects on its own.
        answer = wait_for(
            lambda: (a := post_order(stack, order(user, 1, "1.00"))).status == 200 and a,
            90,
            interval=1,
            what="POST /api/billing to answer 200 after the broker restart",
        )
        message_ids.append(answer.json()["message_id"])
        wait_depth(stack, QUEUE, 51)
        assert stored_ids(stack, user) == []
    assert stack.inspect("api-gateway-app", "{{.State.StartedAt}}") == gateway_started
    assert_stored_exactly_once(stack, user, message_ids)
    wait_depth(stack, QUEUE, 0)


def test_a_consumer_killed_mid_batch_is_restarted_in_place_and_no_order_is_lost_or_duplicated(
    stack: Stack,
) -> None:
    """kill -9 of the consumer process while it holds an unacknowledged batch of a 600-order backlog.

    The orders table is locked while the kill happens, so the kill is certain to land mid-batch: the
    consumer has received a prefetch window and is waiting inside its INSERT transaction.
    """
    user = fresh_user()
    since = docker_now()
    with orders_table_locked(stack):
        with stopped(stack, "billing-app"):
            message_ids = publish_direct(stack, generate={"user_id": user, "count": 600})["message_ids"]
            wait_depth(stack, QUEUE, 600)
        container_id = stack.inspect("billing-app", "{{.Id}}")
        restarts = stack.inspect("billing-app", "{{.RestartCount}}")
        api_pid = supervised_pid(stack, "api:api-0")
        old_pid = wait_for(lambda: supervised_pid(stack, "consumer"), 30, what="the consumer to run")
        wait_for(
            lambda: (
                stack.psql(
                    "billing-db",
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'billing-app consumer' "
                    "AND wait_event_type = 'Lock'",
                )
                != "0"
            ),
            30,
            what="the consumer's INSERT to wait for the lock",
        )
        held = wait_for(
            lambda: stack.queue_stat(QUEUE, "messages_unacknowledged"), 30, what="the broker to count the batch in hand"
        )
        stack.exec("billing-app", "sh", "-c", f"kill -KILL {old_pid}")
        new_pid = wait_for(
            lambda: (pid := supervised_pid(stack, "consumer")) not in (None, old_pid) and pid,
            30,
            what="supervisor to restart the consumer",
        )
        print(f"\nconsumer pid {old_pid} killed holding {held} unacknowledged messages; restarted as pid {new_pid}")
        assert stored_ids(stack, user) == [], "nothing can be stored while the table is locked"
    assert_stored_exactly_once(stack, user, message_ids)
    wait_depth(stack, QUEUE, 0)
    assert stack.inspect("billing-app", "{{.Id}}") == container_id
    assert stack.inspect("billing-app", "{{.RestartCount}}") == restarts
    assert supervised_pid(stack, "api:api-0") == api_pid, "only the consumer was restarted"
    assert re.search(r"exited: consumer \(terminated by SIGKILL", docker_logs_since(stack, "billing-app", since))
    stack.wait_healthy()


def test_orders_sent_while_billing_db_is_down_are_stored_once_it_returns(stack: Stack) -> None:
    user = fresh_user()
    outage = 20.0

    def billing_health() -> int:
        return internal_http(stack, "billing-app", "GET", "/health").status

    assert billing_health() == 200
    message_ids: list[str] = []
    statuses: set[int] = set()
    with stopped(stack, "billing-db"):
        stopped_at = time.monotonic()
        while time.monotonic() - stopped_at < outage:
            message_ids += post_orders(stack, user, 5, workers=5)
            statuses.add(billing_health())
            time.sleep(1)
        down = internal_http(stack, "billing-app", "GET", "/health")
        print(f"\n{len(message_ids)} orders accepted during a {outage:.0f}s billing-db outage; health: {down.json()}")
        assert down.status == 503 and down.json()["checks"]["database"] == "unreachable"
        assert statuses == {503}
    assert_stored_exactly_once(stack, user, message_ids)
    assert billing_health() == 200
    wait_depth(stack, QUEUE, 0)


# --- messages billing-app cannot use, and redeliveries -------------------------------------------


def test_poison_messages_are_dead_lettered_with_the_reason_logged_and_the_next_order_is_stored(
    stack: Stack,
) -> None:
    user = fresh_user()
    not_json, bad_field, valid = (str(uuid.uuid4()) for _ in range(3))
    body = json.dumps(order(user, 2, "3.50"))
    dlq_before = stack.queue_depth(DLQ)
    dead_lettered = scrape(stack, "billing-consumer").value("billing_dead_lettered_total", reason="invalid_message")
    since = docker_now()
    publish_direct(
        stack,
        [
            {"body": "this is not JSON {", "message_id": not_json},
            {"body": json.dumps(order(user, 2, "-3.50")), "message_id": bad_field},
            {"body": body},  # no message_id: it could not be stored idempotently
            {"body": body, "message_id": valid},
        ],
    )
    assert_stored_exactly_once(stack, user, [valid], timeout=60)
    wait_depth(stack, DLQ, dlq_before + 3)
    logs = docker_logs_since(stack, "billing-app", since)
    assert f"rejecting message {not_json} to the dead-letter queue: message body is not JSON" in logs
    assert re.search(rf"rejecting message {bad_field} to the dead-letter queue: total_amount must be", logs)
    assert "to the dead-letter queue: message has no valid message_id" in logs
    wait_depth(stack, QUEUE, 0)
    counted = scrape(stack, "billing-consumer").value("billing_dead_lettered_total", reason="invalid_message")
    assert counted - dead_lettered == 3


def test_an_order_the_database_refuses_is_dead_lettered_alone_and_the_rest_of_its_batch_is_stored(
    stack: Stack,
) -> None:
    """A valid message that the database still refuses (here: a constraint added for the test, as after
    a schema change) goes to the DLQ; its batch-mates are stored and consuming goes on undisturbed."""
    user = fresh_user()
    refused = str(uuid.uuid4())
    good = [str(uuid.uuid4()) for _ in range(4)]
    dlq_before = stack.queue_depth(DLQ)
    refused_before = scrape(stack, "billing-consumer").value(
        "billing_dead_lettered_total", reason="refused_by_database"
    )
    since = docker_now()
    stack.psql("billing-db", "ALTER TABLE orders ADD CONSTRAINT test_refused CHECK (total_amount <> 13.37) NOT VALID")
    try:
        messages = [{"body": json.dumps(order(user, 1, "1.00")), "message_id": mid} for mid in good]
        messages.insert(2, {"body": json.dumps(order(user, 1, "13.37")), "message_id": refused})
        publish_direct(stack, messages)
        assert_stored_exactly_once(stack, user, good, timeout=60)
        wait_depth(stack, DLQ, dlq_before + 1)
    finally:
        stack.psql("billing-db", "ALTER TABLE orders DROP CONSTRAINT IF EXISTS test_refused")
    # The next order flows normally.
    after = post_orders(stack, user, 1)
    assert_stored_exactly_once(stack, user, good + after, timeout=60)
    logs = docker_logs_since(stack, "billing-app", since)
    assert f"rejecting message {refused} to the dead-letter queue: refused by the database" in logs
    assert "consuming interrupted" not in logs, logs
    assert stack.health("billing-app") == "healthy"
    refused_after = scrape(stack, "billing-consumer").value("billing_dead_lettered_total", reason="refused_by_database")
    assert refused_after - refused_before == 1


def test_a_message_id_delivered_twice_is_stored_once(stack: Stack) -> None:
    user = fresh_user()
    first, second, marker = (str(uuid.uuid4()) for _ in range(3))
    body = json.dumps(order(user, 1, "5.00"))
    # Two copies back to back (likely the same batch), then one more after the first is stored.
    publish_direct(stack, [{"body": body, "message_id": first}] * 2)
    wait_for(lambda: count_rows(stack, f"message_id = '{first}'") == 1, 60, what="the first copy to be stored")
    publish_direct(stack, [{"body": body, "message_id": mid} for mid in (first, second, marker)])
    assert_stored_exactly_once(stack, user, [first, second, marker], timeout=60)
    wait_depth(stack, QUEUE, 0)


# --- the broker down: 503, then recovery without restarting the gateway -------------------------


def test_with_the_broker_down_post_answers_503_and_recovers_without_restarting_the_gateway(stack: Stack) -> None:
    user = fresh_user()
    gateway_started = stack.inspect("api-gateway-app", "{{.State.StartedAt}}")
    with stopped(stack, "rabbit-queue"):
        started = time.monotonic()
        answer = stack.http("POST", "/api/billing", order(user), timeout=10)
        latency = time.monotonic() - started
        print(f"\nPOST /api/billing with the broker down: {answer.status} in {latency * 1000:.0f} ms")
        assert answer.status == 503, answer.body
        assert answer.headers["content-type"] == "application/json; charset=utf-8"
        assert "not queued" in answer.json()["error"]
        health = stack.http("GET", "/health", timeout=10)
        assert health.status == 503 and health.json()["checks"]["broker"] == "down", health.body
    # The gateway keeps running; it reconnects by itself.
    answer = wait_for(
        lambda: (a := post_order(stack, order(user))).status == 200 and a,
        60,
        interval=1,
        what="POST /api/billing to answer 200 again",
    )
    assert stack.inspect("api-gateway-app", "{{.State.StartedAt}}") == gateway_started
    assert_stored_exactly_once(stack, user, [answer.json()["message_id"]], timeout=60)
    assert stack.http("GET", "/health").json()["checks"]["broker"] == "ok"


# --- request ids and the read API --------------------------------------------------------------


def test_the_request_id_of_the_post_is_stored_with_the_order(stack: Stack) -> None:
    user = fresh_user()
    answer = post_order(stack, order(user), headers={"X-Request-ID": "billing-trace-1"})
    assert answer.status == 200 and answer.headers["x-request-id"] == "billing-trace-1"
    message_id = answer.json()["message_id"]
    assert_stored_exactly_once(stack, user, [message_id], timeout=60)
    assert [row.request_id for row in stack.order_rows(message_id=message_id)] == ["billing-trace-1"]


def test_get_orders_lists_stored_orders_and_filters_by_user(stack: Stack) -> None:
    user, other = fresh_user(), fresh_user()
    mine = post_orders(stack, user, 3)
    theirs = post_orders(stack, other, 1)
    assert_stored_exactly_once(stack, user, mine, timeout=60)
    assert_stored_exactly_once(stack, other, theirs, timeout=60)

    # The list is paged (100 by default, 1000 at most): the newest orders are on the last page.
    total = count_rows(stack, "true")
    last_page = stack.http("GET", f"/api/orders?limit=1000&offset={max(0, total - 1000)}")
    assert last_page.status == 200
    listed = {o["message_id"] for o in last_page.json()}
    assert set(mine + theirs) <= listed

    for path in (f"/api/orders?user_id={user}", f"/api/orders/?user_id={user}"):
        filtered = stack.http("GET", path)
        assert filtered.status == 200, path
        assert sorted(o["message_id"] for o in filtered.json()) == sorted(mine), path
        assert {o["user_id"] for o in filtered.json()} == {user}
    first = next(o for o in filtered.json() if o["message_id"] == mine[0])
    assert set(first) == {"id", "user_id", "number_of_items", "total_amount", "message_id", "created_at"}
    assert first["total_amount"] == "0.00" and first["number_of_items"] == 1

    for bad in ("abc", "0", "-1", "1.5", str(2**31)):
        refused = stack.http("GET", f"/api/orders?user_id={bad}")
        assert refused.status == 400, (bad, refused.body)
        assert refused.headers["content-type"] == "application/json; charset=utf-8"
        assert refused.json()["error"], bad


# --- throughput ----------------------------------------------------------------------------------


def test_a_10k_order_backlog_drains_completely_and_the_drain_rate_is_recorded(stack: Stack) -> None:
    user = fresh_user()
    wait_depth(stack, QUEUE, 0)
    docker("stop", stack.container("billing-app"))
    try:
        published = publish_direct(stack, generate={"user_id": user, "count": DRAIN_ORDERS})
        wait_depth(stack, QUEUE, DRAIN_ORDERS, timeout=120)
    finally:
        started = time.monotonic()
        docker("start", stack.container("billing-app"))
    wait_for(
        lambda: count_rows(stack, f"user_id = {user}") >= DRAIN_ORDERS,
        600,
        interval=0.25,
        what="the backlog to be stored",
    )
    seconds = time.monotonic() - started
    stack.wait_healthy()
    span = float(
        stack.psql(
            "billing-db",
            f"SELECT extract(epoch FROM max(created_at) - min(created_at)) FROM orders WHERE user_id = {user}",
        )
    )
    assert_stored_exactly_once(stack, user, published["message_ids"], timeout=10)
    wait_depth(stack, QUEUE, 0)
    figures = {
        "orders": DRAIN_ORDERS,
        "publish_seconds": round(published["seconds"], 2),
        "publish_per_second": round(DRAIN_ORDERS / published["seconds"]),
        "drain_seconds_from_docker_start": round(seconds, 2),
        "drain_per_second_from_docker_start": round(DRAIN_ORDERS / seconds),
        "first_to_last_insert_seconds": round(span, 2),
        "drain_per_second_first_to_last_insert": round(DRAIN_ORDERS / span) if span > 0 else None,
    }
    OUTPUT.mkdir(parents=True, exist_ok=True)
    Path(OUTPUT / "billing-drain.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nbilling drain: {json.dumps(figures)}")


# --- faults that are not crashes: every answer tells the truth -------------------------------------------


def broker_state(stack: Stack) -> str:
    return stack.http("GET", "/health", timeout=10).json()["checks"]["broker"]


@contextmanager
def memory_alarm(stack: Stack) -> Iterator[None]:
    """A RabbitMQ memory alarm, as when the broker runs short of memory: a watermark of 0 blocks every
    publishing connection at once. The default watermark (0.4 of RAM) is restored on the way out."""
    stack.exec("rabbit-queue", "rabbitmqctl", "-q", "set_vm_memory_high_watermark", "0")
    try:
        yield
    finally:
        stack.exec("rabbit-queue", "rabbitmqctl", "-q", "set_vm_memory_high_watermark", "0.4")


@contextmanager
def paused(stack: Stack, service: str) -> Iterator[None]:
    """``docker pause`` a service (a hung process: connections accepted, nothing answered)."""
    docker("pause", stack.container(service))
    try:
        yield
    finally:
        docker("unpause", stack.container(service))


def keyed_order(stack: Stack, user_id: int, key: str) -> Response:
    return post_order(stack, order(user_id), headers={"Idempotency-Key": key})


def rows_per_message(stack: Stack, user_id: int) -> Counter[str]:
    return Counter(stored_ids(stack, user_id))


def test_under_a_broker_resource_alarm_a_503_is_never_stored_and_a_200_is_stored_once(stack: Stack) -> None:
    user = fresh_user()
    run_tag = uuid.uuid4().hex[:8]
    answers: dict[str, Response] = {}  # Idempotency-Key -> answer; the key tells each order's message_id
    stop = threading.Event()

    def client(worker: int) -> None:
        for index in range(2000):  # bounded: stopped long before by the event
            if stop.is_set():
                return
            key = f"alarm-{run_tag}-{worker}-{index}"
            answers[key] = keyed_order(stack, user, key)

    retried_key = f"alarm-{run_tag}-retried"
    with ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(client, worker) for worker in range(4)]
        try:
            wait_for(lambda: sum(a.status == 200 for a in answers.values()) >= 20, 60, what="orders accepted")
            with memory_alarm(stack):
                wait_for(lambda: broker_state(stack) == "blocked", 30, what="the gateway to see the broker blocked")
                started = time.monotonic()
                refused = keyed_order(stack, user, retried_key)
                took = time.monotonic() - started
                health = stack.http("GET", "/health")
                wait_for(lambda: sum(a.status == 503 for a in answers.values()) >= 20, 60, what="orders refused")
            wait_for(lambda: broker_state(stack) == "ok", 60, what="the broker to accept orders again")
            accepted_so_far = sum(a.status == 200 for a in answers.values())
            wait_for(
                lambda: sum(a.status == 200 for a in answers.values()) >= accepted_so_far + 20,
                60,
                what="orders accepted again after the alarm",
            )
        finally:
            stop.set()
            for future in clients:
                future.result()

    # While blocked: refused at once, with Retry-After, and /health says why.
    assert refused.status == 503, refused.body
    assert took < 1.0, f"a refused order took {took:.2f}s"
    assert int(refused.headers["retry-after"]) > 0
    assert "not queued" in refused.json()["error"]
    assert health.status == 503 and health.json()["checks"]["broker"] == "blocked", health.body

    # A client retrying the refused order with its key gets one order, whatever it retries.
    expected_id = message_id(retried_key)
    retries = [keyed_order(stack, user, retried_key) for _ in range(3)]
    assert [(r.status, r.json()["message_id"]) for r in retries] == [(200, expected_id)] * 3

    statuses = Counter(a.status for a in answers.values())
    print(f"\norders posted across a memory alarm: {dict(statuses)}")
    assert set(statuses) <= {200, 202, 503}, statuses
    accepted = {message_id(k) for k, a in answers.items() if a.status == 200} | {expected_id}
    unconfirmed = {message_id(k) for k, a in answers.items() if a.status == 202}
    never = {message_id(k) for k, a in answers.items() if a.status == 503}
    for key, answer in answers.items():
        if answer.status in (200, 202):
            assert answer.json()["message_id"] == message_id(key)
    wait_for(lambda: accepted <= set(rows_per_message(stack, user)), 120, what="every accepted order stored")
    wait_depth(stack, QUEUE, 0)
    rows = rows_per_message(stack, user)
    assert all(rows[m] == 1 for m in accepted), "an order answered 200 is not stored exactly once"
    assert [m for m in never if rows[m]] == [], "an order answered 503 was stored"
    assert all(rows[m] <= 1 for m in unconfirmed)
    assert set(rows) <= accepted | unconfirmed


def test_an_order_sent_but_never_confirmed_is_answered_202_unconfirmed_and_a_keyed_retry_stores_it_once(
    stack: Stack,
) -> None:
    user = fresh_user()
    key = f"unconfirmed-{uuid.uuid4()}"
    with paused(stack, "rabbit-queue"):  # the gateway's connection is open, its publish gets no confirm
        answer = keyed_order(stack, user, key)
    assert answer.status == 202, answer.body
    body = answer.json()
    assert (body["status"], body["message_id"]) == ("unconfirmed", message_id(key))
    assert "Idempotency-Key" in body["detail"] and body["request_id"] == answer.headers["x-request-id"]
    stack.wait_healthy()
    retry = wait_for(lambda: (a := keyed_order(stack, user, key)).status == 200 and a, 60, what="a 200 on retry")
    assert retry.json()["message_id"] == message_id(key)
    assert_stored_exactly_once(stack, user, [message_id(key)], timeout=60)


@pytest.mark.parametrize("key", ["", "a b", "x" * 256, "clé", "tab\tkey"])
def test_an_invalid_idempotency_key_is_400_and_nothing_is_published(stack: Stack, key: str) -> None:
    user = fresh_user()
    answer = post_order(stack, order(user), headers={"Idempotency-Key": key})
    assert answer.status == 400, answer.body
    assert answer.json()["field"] == "Idempotency-Key"
    assert stored_ids(stack, user) == []


def test_the_same_idempotency_key_always_answers_the_same_message_id_and_stores_one_order(stack: Stack) -> None:
    user = fresh_user()
    key = str(uuid.uuid4())
    answers = [keyed_order(stack, user, key) for _ in range(3)]
    assert {(a.status, a.json()["message_id"]) for a in answers} == {(200, message_id(key))}
    other = keyed_order(stack, user, key + "-2")
    assert other.status == 200 and other.json()["message_id"] != message_id(key)
    assert_stored_exactly_once(stack, user, [message_id(key), other.json()["message_id"]])
