"""The OpenAPI 3 document of the public API: the single description of every route,
served at /openapi.json and rendered at /docs."""

from __future__ import annotations

from typing import Any

from common.app_main import DEFAULT_MAX_BODY_BYTES
from common.numbers import INT_MAX as _INT_MAX
from common.server import Limits
from common.web import PAGE_DEFAULT, PAGE_MAX

_JSON = "application/json"


_TITLE = "play-with-containers API"
_VERSION = "1.0.0"
_RID = "3f2c9a1e0b7d4c55a1e2f3b4c5d6e7f8"
_LIMITS = Limits()  # the defaults

# Exact patterns of what common/orders.py accepts in a numeric string, so that the document and the
# validation agree value for value (checked by schemathesis in tests/e2e/test_failures.py).
# Around the number: the characters Python's str.strip() removes (" 8 " is accepted as 8).
_SPACES = "[\\t-\\r\\x1c- \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]*"
# 1 to 2147483647, leading zeros allowed.
_POSITIVE_INT = (
    "0*(?:[1-9][0-9]{0,8}|1[0-9]{9}|20[0-9]{8}|21[0-3][0-9]{7}|214[0-6][0-9]{6}|2147[0-3][0-9]{5}"
    "|21474[0-7][0-9]{4}|214748[0-2][0-9]{3}|2147483[0-5][0-9]{2}|21474836[0-3][0-9]|214748364[0-7])"
)
# 0 to 9999999999.99 (numeric(12,2)), at most 2 decimals, leading zeros allowed.
_AMOUNT = "0*[0-9]{1,10}(?:\\.[0-9]{1,2})?"
# PostgreSQL text cannot hold NUL: the apps refuse it with 400.
_NO_NUL = "^[^\\x00]*$"


def _error(description: str, message: str, **extra: Any) -> dict[str, Any]:
    """An error response; the example is the body the API really sends."""
    return {
        "description": description,
        "content": {
            _JSON: {
                "schema": {"$ref": "#/components/schemas/Error"},
                "example": {"error": message, **extra, "request_id": _RID},
            }
        },
    }


def _ok(description: str, schema: dict[str, Any], example: Any) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema, "example": example}}}


def _body(schema_ref: str, example: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {_JSON: {"schema": {"$ref": schema_ref}, "example": example}},
    }


_MOVIE = {"id": 1, "title": "Inception", "description": "A thief who steals corporate secrets through dreams."}
_BAD_JSON = _error(
    "Malformed JSON, a wrong type, an unknown field or a value out of range; `field` names the field at fault.",
    "title must be 1 to 255 characters long",
    field="title",
)
_NOT_JSON = _error(
    "The body is not declared as application/json.", "request body must be JSON (Content-Type: application/json)"
)
_NOT_FOUND = _error("No movie has this id (also for an id that is not an integer).", "movie not found")
_DB_DOWN = _error(
    "The database behind the app is unavailable; retry shortly.", "database unavailable, try again shortly"
)


def _upstream(app: str) -> dict[str, Any]:
    """The answers of a proxied route when the app behind it fails."""
    return {
        "502": _error(
            f"{app} cannot be reached (stopped, crashed, or its name does not resolve).", f"{app} is unreachable"
        ),
        "503": _error(
            f"The database behind {app} is unavailable, or {app} hangs: every request slot the gateway gives it "
            "(`UPSTREAM_MAX_IN_FLIGHT`, all its threads but two) is taken by requests it does not answer, so more "
            "are refused at once (with `Retry-After`) instead of stalling the other routes. Retry shortly.",
            "database unavailable, try again shortly",
        ),
        "504": _error(
            f"{app} accepted the request but did not answer within the gateway's read timeout "
            "(`UPSTREAM_READ_TIMEOUT`, 10 s by default), or its database statement ran out of time "
            "(5 s statement timeout). A write may or may not have been applied.",
            f"{app} did not answer in time",
        ),
    }


_INVENTORY = _upstream("inventory-app")
_MOVIE_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The movie's id (any other value is simply not found: 404).",
    "schema": {"type": "integer", "minimum": 1, "maximum": _INT_MAX},
    "example": 1,
}
_REQUEST_ID_HEADER = {
    "X-Request-ID": {
        "description": "The request's id (the client's if it sent a valid one).",
        "schema": {"type": "string"},
    }
}


def _with_request_id(responses: dict[str, Any]) -> dict[str, Any]:
    for response in responses.values():
        response["headers"] = _REQUEST_ID_HEADER
    return responses


def _too_large(limit: int) -> dict[str, Any]:
    return _error(
        f"The body is larger than {limit} bytes (`MAX_BODY_BYTES`).",
        f"request body too large (limit {limit} bytes)",
        limit=limit,
    )


def document(max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> dict[str, Any]:
    """The document for a gateway that accepts bodies of up to ``max_body_bytes``."""
    too_large = _too_large(max_body_bytes)
    movie_ref = {"$ref": "#/components/schemas/Movie"}
    paths: dict[str, Any] = {
        "/api/movies": {
            "get": {
                "operationId": "listMovies",
                "tags": ["movies"],
                "summary": "List movies",
                "description": "All movies ordered by id. `title` keeps movies whose title contains the text, "
                "ignoring case (`%` and `_` are taken literally). `limit`/`offset` page the list.",
                "parameters": [
                    {
                        "name": "title",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": _NO_NUL},
                        "description": "Case-insensitive substring of the title (UTF-8, no NUL character).",
                        "example": "incep",
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "allowEmptyValue": True,  # `?limit=` is the same as no limit
                        "schema": {"type": "integer", "minimum": 1, "maximum": PAGE_MAX, "default": PAGE_DEFAULT},
                        "description": f"At most this many movies (a page: {PAGE_DEFAULT} when absent, "
                        f"{PAGE_MAX} at most).",
                    },
                    {
                        "name": "offset",
                        "in": "query",
                        "required": False,
                        "allowEmptyValue": True,  # `?offset=` is the same as no offset
                        "schema": {"type": "integer", "minimum": 0, "maximum": _INT_MAX},
                        "description": "Skip this many movies first.",
                    },
                ],
                "responses": {
                    "200": _ok("The movies.", {"type": "array", "items": movie_ref}, [_MOVIE]),
                    "400": _error(
                        "`limit` or `offset` is not a valid integer.",
                        f"limit must be an integer from 1 to {PAGE_MAX}",
                        field="limit",
                    ),
                    **_INVENTORY,
                },
            },
            "post": {
                "operationId": "createMovie",
                "tags": ["movies"],
                "summary": "Create a movie",
                "description": "Stores a new movie and returns it with its id. Answers 200 (not 201), "
                "as the crud-master audit expects.",
                "requestBody": _body(
                    "#/components/schemas/NewMovie",
                    {"title": "Inception", "description": "Dreams within dreams."},
                    "The movie; `description` defaults to an empty string.",
                ),
                "responses": {
                    "200": _ok("The created movie.", movie_ref, _MOVIE),
                    "400": _BAD_JSON,
                    "413": too_large,
                    "415": _NOT_JSON,
                    **_INVENTORY,
                },
            },
            "delete": {
                "operationId": "deleteMovies",
                "tags": ["movies"],
                "summary": "Delete every movie",
                "description": "Removes all movies and says how many there were.",
                "responses": {
                    "200": _ok(
                        "How many movies were deleted.", {"$ref": "#/components/schemas/Deleted"}, {"deleted": 3}
                    ),
                    **_INVENTORY,
                },
            },
        },
        "/api/movies/{id}": {
            "parameters": [_MOVIE_ID],
            "get": {
                "operationId": "getMovie",
                "tags": ["movies"],
                "summary": "Get one movie",
                "description": "The movie with this id.",
                "responses": {"200": _ok("The movie.", movie_ref, _MOVIE), "404": _NOT_FOUND, **_INVENTORY},
            },
            "put": {
                "operationId": "updateMovie",
                "tags": ["movies"],
                "summary": "Update a movie",
                "description": "Changes the given fields (`title`, `description` or both) and returns the movie.",
                "requestBody": _body(
                    "#/components/schemas/MovieChanges",
                    {"description": "Mind-bending."},
                    "The fields to change; at least one.",
                ),
                "responses": {
                    "200": _ok("The updated movie.", movie_ref, _MOVIE),
                    "400": _BAD_JSON,
                    "404": _NOT_FOUND,
                    "413": too_large,
                    "415": _NOT_JSON,
                    **_INVENTORY,
                },
            },
            "delete": {
                "operationId": "deleteMovie",
                "tags": ["movies"],
                "summary": "Delete a movie",
                "description": "Removes the movie and returns it as it was.",
                "responses": {"200": _ok("The deleted movie.", movie_ref, _MOVIE), "404": _NOT_FOUND, **_INVENTORY},
            },
        },
        "/api/billing": {
            "post": {
                "operationId": "createOrder",
                "tags": ["billing"],
                "summary": "Queue an order for billing",
                "description": "Validates the order and publishes it as a persistent message to the billing queue. "
                "Each answer means exactly what it says: 200 only after RabbitMQ confirmed it (the order will be "
                "stored by billing-app, even if billing-app is stopped right now); 503: the order was not queued and "
                "never will be; 202: the order reached the broker but no confirm came, so it may or may not be "
                "stored. Send an `Idempotency-Key` to retry safely after a 202, a 503 or a timeout: every request "
                "with the same key carries the same `message_id`, and billing-app stores a `message_id` once "
                "(the first body stored wins). Numbers may be sent as numeric strings.",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
                        "description": "Any 1 to 255 visible ASCII characters (no spaces), e.g. a UUID made by the "
                        "client for this order: the `message_id` is derived from it (UUIDv5), so retries of one "
                        "order are stored once. Without it, every request is a new order.",
                        "example": "2b1f0d5c-0c53-4a8e-9d0e-6f1b8c2e7a44",
                    }
                ],
                "requestBody": _body(
                    "#/components/schemas/Order",
                    {"user_id": "20", "number_of_items": "99", "total_amount": "250"},
                    "The order; each value a JSON number or a string of digits (an amount may have 2 decimals).",
                ),
                "responses": {
                    "200": _ok(
                        "The order is queued.",
                        {"$ref": "#/components/schemas/Queued"},
                        {"status": "queued", "message_id": "8c3b6f4e-2f0a-4c1e-9a57-0d5f2b7e9c11"},
                    ),
                    "202": _ok(
                        "Outcome unknown: the order was handed to RabbitMQ but no confirm came in time "
                        "(`PUBLISH_CONFIRM_TIMEOUT`, 5 s) or the connection was lost. It may or may not be stored: "
                        "retry with the same `Idempotency-Key`, or look for `message_id` in GET /api/orders.",
                        {"$ref": "#/components/schemas/Unconfirmed"},
                        {
                            "status": "unconfirmed",
                            "message_id": "8c3b6f4e-2f0a-4c1e-9a57-0d5f2b7e9c11",
                            "detail": "the broker received the order but did not confirm it: it may or may not be "
                            "stored; retry with the same Idempotency-Key, or look for message_id in GET /api/orders",
                            "reason": "the broker did not confirm the message in time",
                            "request_id": _RID,
                        },
                    ),
                    "400": _error(
                        "An invalid order, malformed JSON or an invalid `Idempotency-Key`; nothing was published.",
                        "total_amount must be a non-negative amount with at most 2 decimal places",
                        field="total_amount",
                    ),
                    "413": too_large,
                    "415": _NOT_JSON,
                    "503": {
                        **_error(
                            "Not queued, and it never will be: RabbitMQ is unreachable, refused or could not route the "
                            "order, or it blocks publishing (a memory or disk alarm; /health then says `blocked`). "
                            "Retry after `Retry-After` seconds.",
                            "billing is unavailable, the order was not queued; try again shortly",
                            reason="broker unavailable",
                        ),
                    },
                },
            },
        },
        "/api/orders": {
            "get": {
                "operationId": "listOrders",
                "tags": ["billing"],
                "summary": "List stored orders",
                "description": "Orders that billing-app has stored, ordered by id (read-only).",
                "parameters": [
                    {
                        "name": "user_id",
                        "in": "query",
                        "required": False,
                        "allowEmptyValue": True,  # `?user_id=` is the same as no user_id
                        "schema": {"type": "integer", "minimum": 1, "maximum": _INT_MAX},
                        "description": "Only this user's orders.",
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "allowEmptyValue": True,  # `?limit=` is the same as no limit
                        "schema": {"type": "integer", "minimum": 1, "maximum": PAGE_MAX, "default": PAGE_DEFAULT},
                        "description": f"At most this many orders (a page: {PAGE_DEFAULT} when absent, "
                        f"{PAGE_MAX} at most).",
                    },
                    {
                        "name": "offset",
                        "in": "query",
                        "required": False,
                        "allowEmptyValue": True,  # `?offset=` is the same as no offset
                        "schema": {"type": "integer", "minimum": 0, "maximum": _INT_MAX},
                        "description": "Skip this many orders first.",
                    },
                ],
                "responses": {
                    "200": _ok(
                        "The orders.",
                        {"type": "array", "items": {"$ref": "#/components/schemas/StoredOrder"}},
                        [
                            {
                                "id": 1,
                                "user_id": 20,
                                "number_of_items": 99,
                                "total_amount": "250.00",
                                "message_id": "8c3b6f4e-2f0a-4c1e-9a57-0d5f2b7e9c11",
                                "created_at": "2026-11-28T10:00:00.000000+00:00",
                            }
                        ],
                    ),
                    "400": _error(
                        "A query parameter is not a valid integer.",
                        "user_id must be an integer from 1 to 2147483647",
                        field="user_id",
                    ),
                    **_upstream("billing-app"),
                },
            },
        },
        "/health": {
            "get": {
                "operationId": "health",
                "tags": ["operations"],
                "summary": "Health of the gateway",
                "description": "200 when the gateway can serve: it is connected to RabbitMQ with publisher confirms, "
                "RabbitMQ does not block publishing (`broker`: `ok`, `blocked` or `down`), "
                "and inventory-app's own /health answers 200 within 0.8 s. billing-app is reported but not required: "
                "orders wait in the queue while it is down. Used by the container healthcheck.",
                "responses": {
                    "200": _ok(
                        "Usable.",
                        {"$ref": "#/components/schemas/Health"},
                        {"status": "ok", "checks": {"broker": "ok", "inventory-app": "ok", "billing-app": "ok"}},
                    ),
                    "503": _ok(
                        "RabbitMQ or inventory-app is down; `checks` says which.",
                        {"$ref": "#/components/schemas/Health"},
                        {
                            "status": "unavailable",
                            "checks": {"broker": "ok", "inventory-app": "down", "billing-app": "ok"},
                            "error": "a required dependency is down",
                        },
                    ),
                },
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["operations"],
                "summary": "This document",
                "description": "The OpenAPI 3 description of every route, the source of the /docs page.",
                "responses": {
                    "200": _ok(
                        "The document.",
                        {"type": "object"},
                        {"openapi": "3.0.3", "info": {"title": _TITLE, "version": _VERSION}, "paths": {}},
                    )
                },
            },
        },
        "/docs": {
            "get": {
                "operationId": "docs",
                "tags": ["operations"],
                "summary": "Documentation page",
                "description": "This document rendered as one self-contained HTML page for people "
                "(no JavaScript, nothing loaded from elsewhere).",
                "responses": {
                    "200": {
                        "description": "The page.",
                        "content": {
                            "text/html": {
                                "schema": {"type": "string"},
                                "example": f"<!doctype html><html lang=en><head><title>{_TITLE}</title>...",
                            }
                        },
                    }
                },
            },
        },
    }
    for item in paths.values():
        for method, operation in item.items():
            if method != "parameters":
                _with_request_id(operation["responses"])
    string = {"type": "string"}
    text = {"type": "string", "pattern": _NO_NUL, "description": "Any text without a NUL character."}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": _TITLE,
            "version": _VERSION,
            "description": "The public API of the movie-streaming platform, served by api-gateway-app on port 3000, "
            "the only published port. Every route also accepts a trailing slash (`/api/movies/`). "
            'Bodies are JSON (`application/json; charset=utf-8`); errors are `{"error": "<message>", ...}` '
            "with the request id: an unknown path answers 404 and a method the path does not support answers "
            "405 with an `Allow` header. An empty query parameter (`?limit=`) counts as absent. Each answer "
            "carries an `X-Request-ID` header: the client's own when it is 1 to 128 letters, digits or `._:-`, "
            "a new one otherwise. The gateway forwards it to inventory-app "
            "and stores it with each order, so one id traces a request through every log. "
            "Any request may also be refused before it reaches a route, in the same error shape: 503 beyond "
            f"{_LIMITS.total} open connections ({_LIMITS.per_client} per client address), 408 when its head and "
            f"body take more than {_LIMITS.request_timeout} s to arrive, 400/431/413 for a malformed request "
            "line or headers, oversized headers or body.",
        },
        "servers": [{"url": "http://localhost:3000"}],
        "tags": [
            {"name": "movies", "description": "The movie inventory (inventory-app)."},
            {"name": "billing", "description": "Orders, queued through RabbitMQ and stored by billing-app."},
            {"name": "operations", "description": "Health and documentation."},
        ],
        "paths": paths,
        "components": {
            "schemas": {
                "Movie": {
                    "type": "object",
                    "required": ["id", "title", "description"],
                    "additionalProperties": False,
                    "properties": {
                        "id": {"type": "integer"},
                        "title": {**text, "minLength": 1, "maxLength": 255},
                        "description": {**text, "maxLength": 10000},
                    },
                },
                "NewMovie": {
                    "type": "object",
                    "required": ["title"],
                    "additionalProperties": False,
                    "properties": {
                        "title": {**text, "minLength": 1, "maxLength": 255},
                        "description": {**text, "maxLength": 10000, "default": ""},
                    },
                },
                "MovieChanges": {
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": False,
                    "properties": {
                        "title": {**text, "minLength": 1, "maxLength": 255},
                        "description": {**text, "maxLength": 10000},
                    },
                },
                "Deleted": {"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "integer"}}},
                "Order": {
                    "type": "object",
                    "required": ["user_id", "number_of_items", "total_amount"],
                    "additionalProperties": False,
                    "properties": {
                        "user_id": {
                            "oneOf": [
                                {"type": "integer", "minimum": 1, "maximum": _INT_MAX},
                                {"type": "string", "pattern": f"^{_SPACES}{_POSITIVE_INT}{_SPACES}$"},
                            ],
                            "description": "A positive integer (at most 2147483647), or the same as a string of "
                            "digits; surrounding whitespace is ignored.",
                        },
                        "number_of_items": {
                            "oneOf": [
                                {"type": "integer", "minimum": 1, "maximum": _INT_MAX},
                                {"type": "string", "pattern": f"^{_SPACES}{_POSITIVE_INT}{_SPACES}$"},
                            ],
                            "description": "A positive integer (at most 2147483647), or the same as a string of "
                            "digits; surrounding whitespace is ignored.",
                        },
                        "total_amount": {
                            "oneOf": [
                                {"type": "number", "minimum": 0, "maximum": 9999999999.99, "multipleOf": 0.01},
                                {"type": "string", "pattern": f"^{_SPACES}{_AMOUNT}{_SPACES}$"},
                            ],
                            "description": "A non-negative amount (at most 9999999999.99) with at most 2 decimal "
                            "places, as a number or a string; surrounding whitespace is ignored.",
                        },
                    },
                },
                "Unconfirmed": {
                    "type": "object",
                    "required": ["status", "message_id", "detail"],
                    "properties": {
                        "status": {"type": "string", "enum": ["unconfirmed"]},
                        "message_id": {"type": "string", "format": "uuid"},
                        "detail": string,
                        "reason": string,
                        "request_id": string,
                    },
                },
                "Queued": {
                    "type": "object",
                    "required": ["status", "message_id"],
                    "properties": {
                        "status": {"type": "string", "enum": ["queued"]},
                        "message_id": {"type": "string", "format": "uuid"},
                    },
                },
                "StoredOrder": {
                    "type": "object",
                    "required": ["id", "user_id", "number_of_items", "total_amount", "message_id", "created_at"],
                    "properties": {
                        "id": {"type": "integer"},
                        "user_id": {"type": "integer"},
                        "number_of_items": {"type": "integer"},
                        "total_amount": {**string, "description": "Decimal with 2 places."},
                        "message_id": {**string, "format": "uuid"},
                        "created_at": {**string, "format": "date-time"},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": string, "checks": {"type": "object", "additionalProperties": string}},
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {**string, "description": "What went wrong, for people."},
                        "request_id": string,
                    },
                },
            }
        },
    }
