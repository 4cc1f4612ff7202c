"""Integers from untrusted text: in range, or refused cheaply (never Python's ValueError for long numbers)."""

from __future__ import annotations

import uuid

import pytest

from common.numbers import INT_MAX, parse_int
from common.orders import InvalidOrder, message_id, normalise_order


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1),
        ("007", 7),
        (str(INT_MAX), INT_MAX),
        ("0" * 5000 + "42", 42),  # leading zeros cost nothing and change nothing
        (str(INT_MAX + 1), None),
        ("0", None),
        ("", None),
        ("-1", None),
        ("+1", None),
        (" 1", None),
        ("1.0", None),
        ("\uff11", None),  # a full-width digit: isdigit() says yes, the API says no
        ("1" * 5000, None),  # int() itself would raise ValueError past 4300 digits
        ("9" * 100_000, None),
    ],
)
def test_parse_int(text: str, expected: int | None) -> None:
    assert parse_int(text, 1, INT_MAX) == expected


@pytest.mark.parametrize("field", ["user_id", "number_of_items"])
def test_an_order_with_thousands_of_digits_is_invalid_not_a_crash(field: str) -> None:
    body = {"user_id": 1, "number_of_items": 1, "total_amount": "1", field: "1" * 5000}
    with pytest.raises(InvalidOrder) as refused:
        normalise_order(body)
    assert refused.value.field == field


def test_the_same_idempotency_key_always_gives_the_same_message_id() -> None:
    first = message_id("order-2026-12-01-0001")
    assert first == message_id("order-2026-12-01-0001")
    assert first != message_id("order-2026-12-01-0002")
    assert uuid.UUID(first).version == 5
    # Without a key, every order is a new one.
    assert message_id(None) != message_id(None)
    assert uuid.UUID(message_id(None)).version == 4
