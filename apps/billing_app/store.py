"""Orders in PostgreSQL. Storing is idempotent on message_id: a redelivered message never
creates a second order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.db import Pool


@dataclass(frozen=True)
class Order:
    message_id: str
    user_id: int
    number_of_items: int
    total_amount: str
    request_id: str  # "" when the message carried none


_INSERT = """
INSERT INTO orders (user_id, number_of_items, total_amount, message_id, request_id)
SELECT u, n, a::numeric, m::uuid, NULLIF(r, '')
FROM unnest(CAST(:users AS integer[]), CAST(:items AS integer[]), CAST(:amounts AS text[]),
            CAST(:mids AS text[]), CAST(:rids AS text[])) AS t(u, n, a, m, r)
ON CONFLICT (message_id) DO NOTHING
"""


def insert_orders(pool: Pool, orders: list[Order]) -> int:
    """Store the orders in one transaction; returns how many were new."""
    with pool.transaction() as conn:
        conn.run(
            _INSERT,
            users=[o.user_id for o in orders],
            items=[o.number_of_items for o in orders],
            amounts=[o.total_amount for o in orders],
            mids=[o.message_id for o in orders],
            rids=[o.request_id for o in orders],
        )
        return conn.row_count


_LIST = (
    "SELECT id, user_id, number_of_items, total_amount::text, message_id::text, created_at "
    "FROM orders ORDER BY id LIMIT :limit OFFSET :offset"
)
_LIST_BY_USER = (
    "SELECT id, user_id, number_of_items, total_amount::text, message_id::text, created_at "
    "FROM orders WHERE user_id = :user_id ORDER BY id LIMIT :limit OFFSET :offset"
)


def list_orders(pool: Pool, user_id: int | None, limit: int | None, offset: int) -> list[dict[str, Any]]:
    with pool.transaction() as conn:
        if user_id is None:
            rows = conn.run(_LIST, limit=limit, offset=offset)
        else:
            rows = conn.run(_LIST_BY_USER, user_id=user_id, limit=limit, offset=offset)
    return [
        {
            "id": r[0],
            "user_id": r[1],
            "number_of_items": r[2],
            "total_amount": r[3],
            "message_id": r[4],
            "created_at": r[5].isoformat(),
        }
        for r in rows
    ]
