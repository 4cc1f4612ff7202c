"""Billing orders: the one validation used by the gateway (before publishing) and by
billing-app (before storing). Limits mirror the ``orders`` table's column types and checks."""

from __future__ import annotations

import re
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from common.numbers import INT_MAX, parse_int

FIELDS = ("user_id", "number_of_items", "total_amount")
AMOUNT_MAX = Decimal("9999999999.99")  # numeric(12,2)
_AMOUNT = re.compile(r"[0-9]+(\.[0-9]{1,2})?")
# An Idempotency-Key: 1 to 255 visible ASCII characters (no spaces), e.g. a UUID the client made.
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
# Fixed forever: changing it would map every key to another message id, and retries would duplicate.
_IDEMPOTENCY_NAMESPACE = uuid.UUID("5f0c8a3e-2a4b-5d36-9a51-6c1e0f7b9d24")


class InvalidOrder(ValueError):
    """The order is unusable; ``field`` names the culprit when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise InvalidOrder(f"{name} must be a positive integer", name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        value = parse_int(value.strip(), 1, INT_MAX)
    if not isinstance(value, int) or not 1 <= value <= INT_MAX:
        raise InvalidOrder(f"{name} must be a positive integer (at most {INT_MAX})", name)
    return value


def _amount(value: Any, name: str) -> str:
    text: str | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, str):
        text = value.strip()
    if text is None or not _AMOUNT.fullmatch(text):
        raise InvalidOrder(f"{name} must be a non-negative amount with at most 2 decimal places", name)
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise InvalidOrder(f"{name} is not a number", name) from None
    if amount > AMOUNT_MAX:
        raise InvalidOrder(f"{name} must be at most {AMOUNT_MAX}", name)
    return str(amount.quantize(Decimal("0.01")))


def normalise_order(body: Any) -> dict[str, Any]:
    """The order as stored and published: ints, and the amount as a string with 2 decimals."""
    if not isinstance(body, dict):
        raise InvalidOrder("an order must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidOrder("unknown field(s): " + ", ".join(unknown), unknown[0])
    missing = [name for name in FIELDS if name not in body]
    if missing:
        raise InvalidOrder("missing field(s): " + ", ".join(missing), missing[0])
    return {
        "user_id": _positive_int(body["user_id"], "user_id"),
        "number_of_items": _positive_int(body["number_of_items"], "number_of_items"),
        "total_amount": _amount(body["total_amount"], "total_amount"),
    }


def message_id(idempotency_key: str | None) -> str:
    """The message id of an order: the same for every request with the same Idempotency-Key (so a
    retried order is stored once), a fresh random one without a key."""
    if idempotency_key is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(_IDEMPOTENCY_NAMESPACE, idempotency_key))
