"""Hostile input gets a clear 4xx JSON answer, never a 500: numbers too long for Python's int parsing,
out-of-range integers everywhere, unbounded lists, and a statement that outlives its timeout."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from common.jsonapi import PAGE_DEFAULT, PAGE_MAX
from stack import Response, Stack, fresh_user, movies_locked

pytestmark = pytest.mark.e2e

JSON_TYPE = "application/json; charset=utf-8"
HUGE = "1" * 5000  # Python refuses to convert more than 4300 digits (ValueError)


def assert_json_error(answer: Response, status: int) -> dict[str, Any]:
    assert answer.status == status, (answer.status, answer.body[:200])
    assert answer.headers["content-type"] == JSON_TYPE
    body = answer.json()
    assert body["error"] and body["request_id"] == answer.headers["x-request-id"]
    return body


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("movie_id", [HUGE, "0" * 5000 + "1" + "0" * 20, str(2**63), "-" + HUGE])
def test_an_id_of_any_length_is_a_plain_404(stack: Stack, method: str, movie_id: str) -> None:
    body = {"title": "x"} if method == "PUT" else None
    assert_json_error(stack.http(method, f"/api/movies/{movie_id}", body), 404)


@pytest.mark.parametrize(
    "query",
    [f"/api/movies?limit={HUGE}", f"/api/movies?offset={HUGE}", f"/api/orders?user_id={HUGE}",
     f"/api/orders?offset={HUGE}", f"/api/orders?limit={HUGE}", "/api/movies?offset=2147483648"],
)  # fmt: skip
def test_an_integer_query_parameter_of_any_length_is_a_400(stack: Stack, query: str) -> None:
    body = assert_json_error(stack.http("GET", query), 400)
    assert body["field"] in ("limit", "offset", "user_id")


@pytest.mark.parametrize(
    ("field", "value"),
    [("user_id", HUGE), ("number_of_items", HUGE), ("user_id", " " + HUGE + " "), ("total_amount", HUGE),
     ("total_amount", HUGE + ".00"), ("number_of_items", "9" * 20), ("user_id", 2**63)],
)  # fmt: skip
def test_an_order_with_enormous_numbers_is_a_400_naming_the_field(stack: Stack, field: str, value: Any) -> None:
    order = {"user_id": 1, "number_of_items": 1, "total_amount": "1", field: value}
    body = assert_json_error(stack.http("POST", "/api/billing", order), 400)
    assert body["field"] == field


def test_a_json_number_with_thousands_of_digits_is_a_400(stack: Stack) -> None:
    raw = b'{"user_id": ' + HUGE.encode() + b', "number_of_items": 1, "total_amount": "1"}'
    answer = stack.http("POST", "/api/billing", raw=raw, headers={"Content-Type": "application/json"})
    assert_json_error(answer, 400)


# --- lists are paged: a default page, a maximum, never the whole table ---------------------------------------


def test_movie_and_order_lists_answer_the_default_page_and_never_more_than_the_maximum(stack: Stack) -> None:
    tag = "page" + uuid.uuid4().hex[:10]
    count = PAGE_MAX + 5
    stack.psql(
        "inventory-db",
        f"INSERT INTO movies (title) SELECT '{tag} ' || n FROM generate_series(1, {count}) AS n",
    )
    user = fresh_user()
    stack.psql(
        "billing-db",
        "INSERT INTO orders (user_id, number_of_items, total_amount, message_id) "
        f"SELECT {user}, 1, 1, gen_random_uuid() FROM generate_series(1, {count})",
    )
    try:
        for path in (f"/api/movies?title={tag}", f"/api/orders?user_id={user}"):
            assert len(stack.http("GET", path).json()) == PAGE_DEFAULT
            assert len(stack.http("GET", f"{path}&limit={PAGE_MAX}").json()) == PAGE_MAX
            assert len(stack.http("GET", f"{path}&limit={PAGE_MAX}&offset={PAGE_MAX}").json()) == 5
            assert_json_error(stack.http("GET", f"{path}&limit={PAGE_MAX + 1}"), 400)
    finally:
        stack.psql("inventory-db", f"DELETE FROM movies WHERE title LIKE '{tag} %'")
        stack.psql("billing-db", f"DELETE FROM orders WHERE user_id = {user}")


# --- a statement that runs out of time is reported as such ------------------------------------------------


def test_a_statement_timeout_is_a_504_that_says_so_not_database_unavailable(stack: Stack) -> None:
    movie = stack.http("POST", "/api/movies", {"title": "locked " + uuid.uuid4().hex[:8]}).json()
    with movies_locked(stack, 12):
        answer = stack.http("GET", f"/api/movies/{movie['id']}", timeout=30)
        body = assert_json_error(answer, 504)
        assert "timeout" in body["error"] and "unavailable" not in body["error"], body
    # The pool kept its connection usable: the next read just works.
    assert stack.http("GET", f"/api/movies/{movie['id']}").status == 200
