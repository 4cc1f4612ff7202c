"""Orders in PostgreSQL. Storing is idempotent on message_id: a redelivered message never
creates a second order."""

from __future__ import annotations

import json
from typing import Any

from common.db import Pool
from common.orders import Order

# The batch travels as one JSON parameter, unpacked by the server: pg8000 would escape five arrays
# element by element in Python, the consumer's single busiest step.
_INSERT = """
INSERT INTO orders (user_id, number_of_items, total_amount, message_id, request_id)
SELECT u, n, a, m, NULLIF(r, '')
FROM json_to_recordset(CAST(:batch AS json)) AS t(u integer, n integer, a numeric, m uuid, r text)
ON CONFLICT (message_id) DO NOTHING
"""


def insert_orders(pool: Pool, orders: list[Order]) -> int:
    """Store the orders in one transaction; returns how many were new."""
    batch = json.dumps(
        [
            {"u": o.user_id, "n": o.number_of_items, "a": o.total_amount, "m": o.message_id, "r": o.request_id}
            for o in orders
        ]
    )
    with pool.transaction() as conn:
        conn.run(_INSERT, batch=batch)
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
    if user_id is None:
        rows = pool.query(_LIST, limit=limit, offset=offset)
    else:
        rows = pool.query(_LIST_BY_USER, user_id=user_id, limit=limit, offset=offset)
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
