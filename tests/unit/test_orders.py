"""Order validation, shared by the gateway (400 before publishing) and billing-app (dead-letter)."""

from __future__ import annotations

import pytest

from common.orders import InvalidOrder, normalise_order


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
