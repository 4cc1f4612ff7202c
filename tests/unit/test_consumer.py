"""The billing consumer's own decisions: which messages it dead-letters, how long it waits between
retries, and what billing-app's /health learns from it about a store outage."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pika
import pytest
from pg8000.exceptions import DatabaseError

from billing_app import consumer as consumer_module
from billing_app.api import consumer_checks
from billing_app.consumer import Backoff, Consumer, ConsumerSettings, parse_message
from common.amqp import BrokerSettings
from common.db import DbSettings, Pool
from common.orders import InvalidOrder

ORDER = {"user_id": 7, "number_of_items": 2, "total_amount": "3.5"}


def properties(message_id: str | None = None, headers: dict[str, object] | None = None) -> pika.BasicProperties:
    return pika.BasicProperties(message_id=message_id or str(uuid.uuid4()), headers=headers)


def test_a_valid_message_is_read_as_an_order_with_its_request_id() -> None:
    message_id = str(uuid.uuid4())
    order = parse_message(properties(message_id, {"x-request-id": b"req-1"}), json.dumps(ORDER).encode())
    assert (order.message_id, order.user_id, order.number_of_items) == (message_id, 7, 2)
    assert (order.total_amount, order.request_id) == ("3.50", "req-1")


@pytest.mark.parametrize(
    ("props", "body"),
    [
        (properties(), b"not JSON {"),
        (properties(), b"\xff\xfe"),
        (properties(), b"[" * 100_000),
        (properties(), json.dumps({**ORDER, "user_id": "1" * 5000}).encode()),
        (properties(), json.dumps({**ORDER, "total_amount": "-1"}).encode()),
        (pika.BasicProperties(), json.dumps(ORDER).encode()),
        (properties("not-a-uuid"), json.dumps(ORDER).encode()),
    ],
)
def test_an_unusable_message_raises_invalid_order_with_a_reason(props: pika.BasicProperties, body: bytes) -> None:
    with pytest.raises(InvalidOrder) as refused:
        parse_message(props, body)
    assert str(refused.value)


def test_whatever_goes_wrong_while_reading_a_message_becomes_invalid_order(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_: object) -> dict[str, object]:
        raise RuntimeError("an unforeseen case")

    monkeypatch.setattr(consumer_module, "normalise_order", broken)
    with pytest.raises(InvalidOrder, match="message cannot be read: RuntimeError: an unforeseen case"):
        parse_message(properties(), json.dumps(ORDER).encode())


def test_backoff_doubles_up_to_its_cap_and_starts_again_after_reset() -> None:
    backoff = Backoff(0.5, 5.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 0.5


def make_consumer(status_file: Path) -> Consumer:
    broker = BrokerSettings("broker", 5672, "user", "secret", "billing_queue", "billing", 30, 1.0)
    pool = Pool(DbSettings("db", 5432, "db", "user", "secret", 1.0, 1000), size=1, application_name="test")
    settings = ConsumerSettings(prefetch=10, batch_size=5, batch_wait=0.05, status_file=str(status_file))
    return Consumer(broker, pool, settings)


def test_a_store_outage_reported_by_the_consumer_reaches_health_until_a_write_succeeds(tmp_path: Path) -> None:
    status_file = tmp_path / "consumer.json"
    assert consumer_checks(str(status_file)) == ({"consumer": "not running"}, {})
    worker = make_consumer(status_file)
    try:
        worker._set_connected(True)
        assert consumer_checks(str(status_file)) == ({"consumer": "ok", "store": "ok"}, {})

        refused = DatabaseError({"S": "ERROR", "C": "42501", "M": "permission denied for table orders"})
        worker._report_outage(refused, 0.5)
        checks, details = consumer_checks(str(status_file))
        assert checks == {"consumer": "ok", "store": "failing"}
        assert details["store"].endswith("permission denied for table orders (SQLSTATE 42501)")

        worker._report_store_ok()
        assert consumer_checks(str(status_file)) == ({"consumer": "ok", "store": "ok"}, {})
    finally:
        worker._writer.shutdown()


def test_a_consumer_that_stopped_updating_its_status_is_not_responding(tmp_path: Path) -> None:
    status_file = tmp_path / "consumer.json"
    status_file.write_text(json.dumps({"connected": True, "store_error": None, "updated": time.time() - 60}))
    assert consumer_checks(str(status_file)) == ({"consumer": "not responding"}, {})
