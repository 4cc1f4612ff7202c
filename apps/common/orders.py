"""Billing orders, from the gateway's request to billing-app's row: the one validation used by the
gateway (before publishing) and by billing-app (before storing), with limits that mirror the ``orders``
table's column types and checks; the message id; and the message that carries an order through the
broker, built by the gateway and read by billing-app as plain values (the publisher and the consumer
translate them to and from pika's at their edge).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
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


# The message: a persistent JSON body, the order's message id, and the request id in a header. Messages
# already queued are read by the next billing-app: change this format only in ways both can read.
CONTENT_TYPE = "application/json"
PERSISTENT = 2  # AMQP delivery mode: the broker keeps the message on disk
REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_MAX = 128  # orders.request_id varchar(128): a longer one is cut, never refused


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


@dataclass(frozen=True)
class Order:
    """An order as billing-app stores it."""

    message_id: str
    user_id: int
    number_of_items: int
    total_amount: str
    request_id: str  # "" when the message carried none


@dataclass(frozen=True)
class Message:
    """An AMQP message as plain values: what the gateway publishes, or whatever billing-app received
    (then any property may be missing, and a header's value may be bytes)."""

    body: bytes
    message_id: str | None
    headers: Mapping[str, Any] = field(default_factory=dict)
    timestamp: int | None = None
    content_type: str | None = CONTENT_TYPE
    delivery_mode: int | None = PERSISTENT


def order_message(order: dict[str, Any], message_id: str, request_id: str) -> Message:
    """The message that carries ``order`` (as :func:`normalise_order` returns it) to billing-app."""
    body = json.dumps(order, separators=(",", ":")).encode("utf-8")
    return Message(body, message_id, {REQUEST_ID_HEADER: request_id}, int(time.time()))


def read_order(message: Message) -> Order:
    """The order carried by a message, or InvalidOrder saying why it cannot be stored. Nothing
    else is raised, whatever the message holds: one unreadable message must not stop the others."""
    try:
        return _read_order(message)
    except InvalidOrder:
        raise
    except Exception as exc:  # noqa: BLE001 - becomes the reason the message is dead-lettered
        raise InvalidOrder(f"message cannot be read: {type(exc).__name__}: {exc}"[:500]) from None


def _read_order(message: Message) -> Order:
    try:
        message_id = str(uuid.UUID(message.message_id or ""))
    except ValueError:
        raise InvalidOrder("message has no valid message_id (uuid)") from None
    try:
        payload = json.loads(message.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidOrder("message body is not JSON") from None
    order = normalise_order(payload)
    request_id = (message.headers or {}).get(REQUEST_ID_HEADER, "")
    if isinstance(request_id, bytes):
        request_id = request_id.decode("utf-8", "replace")
    request_id = str(request_id)[:REQUEST_ID_MAX]
    return Order(message_id, order["user_id"], order["number_of_items"], order["total_amount"], request_id)
