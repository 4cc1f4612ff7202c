"""The tests' own toolkit, where the end-to-end and swarm suites depend on it: the load generator
(tests/load.py) against real HTTP servers on loopback, and how the stack helpers (tests/stack.py)
read what psql and rabbitmqctl print."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from load import Client, Load, numbered, run_load
from stack import Operator, OrderRow, fresh_user


class Handler(BaseHTTPRequestHandler):
    """200 with the server's name in X-Served-By; /fail answers 500; every request path is recorded."""

    def do_GET(self) -> None:
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        status = 500 if self.path == "/fail" else 200
        body = b'{"ok": true}'
        self.send_response(status)
        self.send_header("X-Served-By", self.server.name)  # type: ignore[attr-defined]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[list[ThreadingHTTPServer]]:
    running = []
    for name in ("gw1", "gw2"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.name, server.paths = name, []  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        running.append(server)
    yield running
    for server in running:
        server.shutdown()
        server.server_close()


def url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_numbered_requests_are_counted_over_every_client_and_the_clients_shared_out_between_base_urls(
    servers: list[ThreadingHTTPServer],
) -> None:
    def make(number: int) -> tuple[str, str, object]:
        return "GET", f"/n/{number}", None

    report = run_load([url(s) for s in servers], numbered(make), clients=4, rate=None, seconds=30, max_requests=40)
    assert report.failures() == [] and len(report.results) == 40
    assert sorted(int(p.rsplit("/", 1)[1]) for s in servers for p in s.paths) == list(range(1, 41))
    # Client i talks to base URL i % 2, however fast each one goes.
    assert {(r.client % 2, r.headers["x-served-by"]) for r in report.results} == {(0, "gw1"), (1, "gw2")}
    assert sum(report.header_counts("x-served-by").values()) == 40
    assert report.brief() == "40 requests, 0 failed"


def test_every_answer_but_a_200_no_answer_and_a_scenario_error_are_failures(servers: list[ThreadingHTTPServer]) -> None:
    def scenario(client: Client, iteration: int) -> None:
        client.request("GET", "/fail" if iteration == 0 else "/ok")
        if iteration == 1:
            raise RuntimeError("a bug in the scenario")

    report = run_load(url(servers[0]), scenario, clients=1, rate=None, seconds=30, max_requests=10)
    assert report.failures() == ["GET /fail: 500 b'{\"ok\": true}'", "client 0: RuntimeError: a bug in the scenario"]
    closed = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = closed.server_address[1]
    closed.server_close()
    refused = run_load(f"http://127.0.0.1:{port}", numbered(lambda n: ("GET", "/", None)), clients=1, rate=None,
                       seconds=30, max_requests=1)  # fmt: skip
    assert refused.failures() == ["GET /: ConnectionRefusedError: [Errno 111] Connection refused"]
    assert refused.header_counts("x-served-by", "?") == {}


def test_a_load_in_the_background_counts_what_is_sent_and_stops_when_asked(servers: list[ThreadingHTTPServer]) -> None:
    load = Load(url(servers[1]), numbered(lambda n: ("POST", "/orders", {"n": n}), pause=0.001), clients=2,
                rate=None, seconds=60)  # fmt: skip
    with load:
        load.wait_sent(50, timeout=30)
        assert load.sent >= 50 and not load.finished
        so_far = load.snapshot()
        assert len(so_far.results) >= 50 and so_far.failures() == []
    assert load.finished and load.report is not None
    assert len(load.report.results) >= len(so_far.results)
    assert load.report.header_counts("x-served-by") == {"gw2": len(load.report.results)}


def test_a_load_with_a_request_budget_finishes_by_itself(servers: list[ThreadingHTTPServer]) -> None:
    load = Load(url(servers[0]), numbered(lambda n: ("GET", "/", None)), clients=3, rate=None, seconds=60,
                max_requests=30)  # fmt: skip
    with load:
        report = load.wait_finished(30)
    assert len(report.results) == 30 and report.failures() == []


class Canned(Operator):
    """An operator whose containers print what a real psql and rabbitmqctl print."""

    def __init__(self, outputs: dict[str, str]) -> None:
        self.env = {"INVENTORY_DB_NAME": "inventory", "BILLING_DB_NAME": "billing"}
        self.outputs = outputs
        self.commands: list[tuple[str, ...]] = []

    def output(self, service: str, *command: str, user: str | None = None) -> str:
        self.commands.append((service, *command))
        return self.outputs[command[0]]


def test_queue_counters_are_read_from_rabbitmqctl_by_queue_name() -> None:
    operator = Canned({"rabbitmqctl": "billing_queue.dlq\t2\nbilling_queue\t17\n"})
    assert (operator.queue_depth("billing_queue"), operator.queue_depth("billing_queue.dlq")) == (17, 2)
    assert operator.queue_stat("billing_queue", "messages_unacknowledged") == 17
    assert operator.commands[-1][-1] == "messages_unacknowledged"
    with pytest.raises(AssertionError, match="queue other not found"):
        operator.queue_depth("other")


def test_order_rows_are_read_by_user_or_message_id_with_an_empty_request_id_when_none() -> None:
    message_id = "0b4f1d6e-59a3-4c07-9c1b-2f0a3e5d7c11"
    operator = Canned({"psql": f"{message_id}|req-1\n{message_id}|\n"})
    assert operator.order_rows(user_id=fresh_user()) == [OrderRow(message_id, "req-1"), OrderRow(message_id, "")]
    assert "WHERE user_id = " in operator.commands[-1][-1] and "billing" in operator.commands[-1]
    operator.order_rows(message_id=message_id)
    assert f"WHERE message_id = '{message_id}' ORDER BY id" in operator.commands[-1][-1]
    with pytest.raises(ValueError):
        operator.order_rows(message_id="x'; DROP TABLE orders; --")
    with pytest.raises(TypeError):
        operator.order_rows()


def test_fresh_users_never_repeat_even_from_many_threads_and_stay_valid_user_ids() -> None:
    users: list[int] = []
    threads = [threading.Thread(target=lambda: users.extend(fresh_user() for _ in range(500))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(users)) == len(users) == 4000
    assert all(1_000_000_000 <= user < 2**31 - 1 for user in users)
