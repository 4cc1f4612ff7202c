"""Orders: the validation shared by the gateway (400 before publishing) and billing-app (dead-letter),
and the message that carries an order between them, built and read back as plain values."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from common import orders
from common.orders import InvalidOrder, Message, Order, message_id, normalise_order, order_message, read_order


def test_audit_order_with_numeric_strings_is_normalised() -> None:
    order = normalise_order({"user_id": "20", "number_of_items": "99", "total_amount": "250"})
    assert order == {"user_id": 20, "number_of_items": 99, "total_amount": "250.00"}


@pytest.mark.parametrize(
    ("amount", "expected"),
    [(0, "0.00"), ("0.5", "0.50"), (12.25, "12.25"), ("9999999999.99", "9999999999.99"), (" 7 ", "7.00")],
)
def test_amounts_keep_two_decimals(amount: object, expected: str) -> None:
    order = normalise_order({"user_id": 1, "number_of_items": 1, "total_amount": amount})
    assert order["total_amount"] == expected


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": 0, "number_of_items": 1, "total_amount": 1}, "user_id"),
        ({"user_id": -3, "number_of_items": 1, "total_amount": 1}, "user_id"),
        ({"user_id": True, "number_of_items": 1, "total_amount": 1}, "user_id"),
        ({"user_id": "1e3", "number_of_items": 1, "total_amount": 1}, "user_id"),
        ({"user_id": 2**31, "number_of_items": 1, "total_amount": 1}, "user_id"),
        ({"user_id": 1, "number_of_items": 1.5, "total_amount": 1}, "number_of_items"),
        ({"user_id": 1, "number_of_items": None, "total_amount": 1}, "number_of_items"),
        ({"user_id": 1, "number_of_items": 1, "total_amount": "-1"}, "total_amount"),
        ({"user_id": 1, "number_of_items": 1, "total_amount": "1.234"}, "total_amount"),
        ({"user_id": 1, "number_of_items": 1, "total_amount": "NaN"}, "total_amount"),
        ({"user_id": 1, "number_of_items": 1, "total_amount": 1e300}, "total_amount"),
        ({"user_id": 1, "number_of_items": 1, "total_amount": "10000000000"}, "total_amount"),
        ({"user_id": 1, "number_of_items": 1}, "total_amount"),
        ({"user_id": 1, "number_of_items": 1, "total_amount": 1, "coupon": "x"}, "coupon"),
    ],
)
def test_invalid_orders_are_refused_naming_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidOrder) as refused:
        normalise_order(body)
    assert refused.value.field == field


def test_an_order_must_be_an_object() -> None:
    with pytest.raises(InvalidOrder):
        normalise_order([1, 2, 3])


# --- the message that carries an order from the gateway to billing-app ----------------------------

ORDER = {"user_id": 7, "number_of_items": 2, "total_amount": "3.5"}


def message(body: bytes, message_id: str | None = None, headers: dict[str, Any] | None = None) -> Message:
    return Message(body, str(uuid.uuid4()) if message_id is None else message_id, headers or {})


def test_an_order_message_reads_back_as_the_order_with_its_message_and_request_ids() -> None:
    order = normalise_order(ORDER)
    key = message_id("client-key-1")
    sent = order_message(order, key, "req-1")
    assert (sent.content_type, sent.delivery_mode, sent.message_id) == ("application/json", 2, key)
    assert sent.headers == {"x-request-id": "req-1"} and abs(sent.timestamp - time.time()) < 5
    assert json.loads(sent.body) == order
    assert read_order(sent) == Order(key, 7, 2, "3.50", "req-1")


@pytest.mark.parametrize(
    ("headers", "request_id"),
    [
        ({"x-request-id": "req-2"}, "req-2"),
        ({"x-request-id": b"req-2"}, "req-2"),  # as pika decodes a byte-array header, or text not UTF-8
        ({"x-request-id": b"\xffreq"}, "\ufffdreq"),
        ({"x-request-id": "r" * 500}, "r" * 128),  # orders.request_id is varchar(128)
        ({}, ""),
        ({"other": "x"}, ""),
    ],
)
def test_the_request_id_header_may_be_bytes_or_text_or_absent(headers: dict[str, Any], request_id: str) -> None:
    assert read_order(message(json.dumps(ORDER).encode(), headers=headers)).request_id == request_id


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        (message(json.dumps(ORDER).encode(), message_id=""), "message_id"),
        (message(json.dumps(ORDER).encode(), message_id="not-a-uuid"), "message_id"),
        (Message(json.dumps(ORDER).encode(), None), "message_id"),
        (message(b"not JSON {"), "not JSON"),
        (message(b"\xff\xfe"), "not JSON"),
        (message(b"[" * 100_000), "not JSON"),
        (message(json.dumps({**ORDER, "user_id": "1" * 5000}).encode()), "user_id"),
        (message(b'{"user_id": 1' + b"0" * 5000 + b', "number_of_items": 1, "total_amount": "1"}'), "not JSON"),
        (message(b'{"user_id": 1, "number_of_items": 1' + b"0" * 4000 + b', "total_amount": "1"}'), "number_of_items"),
        (message(b'{"user_id": 1, "number_of_items": 1, "total_amount": 1e400}'), "total_amount"),
        (message(json.dumps({**ORDER, "total_amount": "-1"}).encode()), "total_amount"),
        (message(json.dumps([ORDER]).encode()), "JSON object"),
    ],
)
def test_an_unusable_message_is_invalid_order_with_a_reason(sent: Message, reason: str) -> None:
    with pytest.raises(InvalidOrder, match=reason):
        read_order(sent)


def test_whatever_goes_wrong_while_reading_a_message_becomes_invalid_order(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_: object) -> dict[str, object]:
        raise RuntimeError("an unforeseen case")

    monkeypatch.setattr(orders, "normalise_order", broken)
    with pytest.raises(InvalidOrder, match="message cannot be read: RuntimeError: an unforeseen case"):
        read_order(message(json.dumps(ORDER).encode()))
