"""The billing consumer's own decisions: how it reads a delivery (what it dead-letters: see also
test_orders.py), and what billing-app's /health learns from it about a store outage."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pika
import pytest
from pg8000.exceptions import DatabaseError

from billing_app.api import consumer_checks
from billing_app.consumer import Consumer, ConsumerSettings, received_message
from common.amqp import BrokerSettings
from common.db import DbSettings, Pool
from common.orders import InvalidOrder, read_order

ORDER = {"user_id": 7, "number_of_items": 2, "total_amount": "3.5"}


def test_a_delivery_is_read_as_an_order_with_its_request_id() -> None:
    message_id = str(uuid.uuid4())
    properties = pika.BasicProperties(message_id=message_id, headers={"x-request-id": b"req-1"}, timestamp=1)
    order = read_order(received_message(properties, json.dumps(ORDER).encode()))
    assert (order.message_id, order.user_id, order.number_of_items) == (message_id, 7, 2)
    assert (order.total_amount, order.request_id) == ("3.50", "req-1")


@pytest.mark.parametrize(
    "properties",
    [pika.BasicProperties(), pika.BasicProperties(message_id="not-a-uuid", headers={"x-request-id": None})],
)
def test_a_delivery_without_a_valid_message_id_is_invalid_order(properties: pika.BasicProperties) -> None:
    with pytest.raises(InvalidOrder, match="message_id"):
        read_order(received_message(properties, json.dumps(ORDER).encode()))


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
