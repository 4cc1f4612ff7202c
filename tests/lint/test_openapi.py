"""The OpenAPI document (apps/api_gateway_app/openapi.json) cannot drift from the code: it is a valid
OpenAPI 3 document, the gateway serves it, it documents exactly the gateway's routes, and every limit it
states (a schema bound, a pattern, a number in a text or an example) is compared here with the constant or
the function the validation uses. No Docker: the gateway is built in this process.
(The stack serving this same document: tests/e2e/test_gateway.py.)"""

from __future__ import annotations

import io
import json
import re
import string
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import bottle
import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from api_gateway_app import docs_page, openapi
from api_gateway_app.proxy import Upstream
from api_gateway_app.publisher import Publisher
from api_gateway_app.routes import HEALTH_PROBE_TIMEOUT, build_app
from common.amqp import BrokerSettings
from common.app_main import DEFAULT_MAX_BODY_BYTES
from common.config import Env
from common.jsonapi import PAGE_DEFAULT, PAGE_MAX, ApiError, paging, query_int, to_json
from common.numbers import INT_MAX
from common.orders import AMOUNT_MAX, IDEMPOTENCY_KEY, InvalidOrder, normalise_order
from common.request_context import RequestContext
from common.server import Limits
from inventory_app.movies import DESCRIPTION_MAX, TITLE_MAX, check_text, parse_id, validate_changes, validate_new
from stack import ROOT

COLLECTION = ROOT / "docs" / "postman" / "play-with-containers.postman_collection.json"
JSON = "application/json"
MOVIES, MOVIE, BILLING, ORDERS = (
    ("paths", p) for p in ("/api/movies", "/api/movies/{id}", "/api/billing", "/api/orders")
)
SCHEMAS = ("components", "schemas")
ORDER = (*SCHEMAS, "Order", "properties")
# The keywords that bound a value; "pattern" is checked apart, by what it accepts.
BOUND_KEYWORDS = {
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength", "maxLength",
    "minItems", "maxItems", "minProperties", "maxProperties", "default",
}  # fmt: skip
KEY_MAX = max(n for n in range(1, 1024) if IDEMPOTENCY_KEY.fullmatch("k" * n))

Location = tuple[Any, ...]


# --- helpers --------------------------------------------------------------------------------------------------------


def leaves(node: Any, location: Location = ()) -> Iterator[tuple[Location, Any]]:
    """Every value of the document with its location: keys, and in a list the item's `name` (a parameter)
    or else its index."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, (*location, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from leaves(value, (*location, value.get("name", index) if isinstance(value, dict) else index))
    else:
        yield location, node


def at(document: dict[str, Any], location: Location) -> Any:
    node: Any = document
    for step in location:
        if isinstance(node, list) and isinstance(step, str):
            node = next(item for item in node if item.get("name") == step)
        else:
            node = node[step]
    return node


def gateway(max_body_bytes: int) -> RequestContext:
    """The gateway's WSGI app, built in this process: dummy upstreams, a publisher never started."""
    env = Env({"RABBITMQ_GATEWAY_USER": "unused", "RABBITMQ_GATEWAY_PASSWORD": "unused"})
    publisher = Publisher(BrokerSettings.from_env(env, "GATEWAY"), 1.0)
    dummy = "http://127.0.0.1:9"
    upstreams = (Upstream("inventory-app", dummy, 1, 1, 8), Upstream("billing-app", dummy, 1, 1, 8))
    return RequestContext(build_app(*upstreams, publisher, max_body_bytes))


def call(
    app: RequestContext, method: str, path: str, body: bytes = b"", content_type: str = JSON
) -> tuple[int, dict[str, str], bytes]:
    """A request the gateway answers itself (not proxied): status, headers, body."""
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "test", "SERVER_PORT": "80",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": io.StringIO(),
        "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": content_type, "REMOTE_ADDR": "127.0.0.1",
    }  # fmt: skip
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        answer.update(status=int(status.split()[0]), headers=dict(headers))

    payload = b"".join(app(environ, start_response))
    return answer["status"], answer["headers"], payload


def error_body(action: Callable[[], Any]) -> dict[str, Any]:
    """The error body (without request id) the API answers when ``action`` raises ApiError or InvalidOrder."""
    try:
        action()
    except ApiError as exc:
        return {"error": exc.body, **exc.extra}
    except InvalidOrder as exc:  # the gateway answers it as ApiError(400, str(exc), field=exc.field)
        return {"error": str(exc), "field": exc.field}
    raise AssertionError("no error raised")


def with_query(text: str, action: Callable[[], Any]) -> Callable[[], Any]:
    """``action``, run as during a request whose query string is ``text``."""

    def run() -> Any:
        bottle.request.bind({"QUERY_STRING": text, "REQUEST_METHOD": "GET", "PATH_INFO": "/"})
        return action()

    return run


def route_key(method: str, path: str) -> tuple[str, str]:
    """(METHOD, path) with every path parameter written {}: Bottle's <id> and OpenAPI's {id} alike."""
    return method.upper(), re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path)


def documented_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        route_key(method, path) for path, item in document["paths"].items() for method in item if method != "parameters"
    }


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "request_id"}


def ecma(pattern: str) -> str:
    """A document's pattern for Python's re: JSON Schema patterns are ECMA-262 regular expressions, whose `$`
    (without the multiline flag) is the very end, where Python's also matches before a final newline."""
    assert pattern.startswith("^") and pattern.endswith("$") and not pattern.endswith("\\$"), pattern
    return pattern[:-1] + r"\Z"


def matches(pattern: str, value: str) -> bool:
    return re.search(ecma(pattern), value) is not None


def accepted_order(**fields: Any) -> bool:
    try:
        normalise_order({"user_id": 1, "number_of_items": 1, "total_amount": "1", **fields})
    except InvalidOrder as exc:
        assert exc.field in fields
        return False
    return True


def accepted_text(value: str) -> bool:
    try:
        check_text(value, "title")
    except ApiError:
        return False
    return True


# --- the file and what the gateway serves ---------------------------------------------------------------------------


def test_the_file_is_a_valid_openapi_3_document_without_duplicate_keys() -> None:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        assert len(keys) == len(set(keys)), f"duplicate keys in openapi.json: {keys}"
        return dict(pairs)

    document = json.loads(openapi.PATH.read_text(encoding="utf-8"), object_pairs_hook=no_duplicates)
    assert document["openapi"].startswith("3.0.")
    validate(document)
    assert document == openapi.document(DEFAULT_MAX_BODY_BYTES) == openapi.document()


def test_the_file_is_formatted_the_way_json_dumps_writes_it() -> None:
    """One canonical layout, so that each change to the document is a readable diff. To reformat:
    python3 -c 'import json,sys; p=sys.argv[1]; d=json.load(open(p)); open(p,"w").write(json.dumps(d, indent=2,
    ensure_ascii=False) + "\\n")' apps/api_gateway_app/openapi.json"""
    text = openapi.PATH.read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("max_body_bytes", [DEFAULT_MAX_BODY_BYTES, 1024])
def test_the_gateway_serves_the_document_for_its_body_limit_and_renders_docs_from_it(max_body_bytes: int) -> None:
    app = gateway(max_body_bytes)
    status, headers, body = call(app, "GET", "/openapi.json")
    assert (status, headers["Content-Type"]) == (200, "application/json; charset=utf-8")
    document = openapi.document(max_body_bytes)
    assert body == to_json(document)
    validate(document)
    status, headers, body = call(app, "GET", "/docs")
    assert (status, headers["Content-Type"]) == (200, "text/html; charset=utf-8")
    assert body == docs_page.render(document).encode("utf-8")


def test_the_document_describes_exactly_the_routes_the_gateway_serves() -> None:
    served = {route_key(route.method, route.rule) for route in gateway(DEFAULT_MAX_BODY_BYTES).app.routes}
    assert documented_routes(openapi.document()) == served
    assert len(served) == 11


def test_every_operation_has_a_description_and_an_example_for_every_response() -> None:
    for operation in openapi.operations(openapi.document()):
        name = operation["operationId"]
        assert operation.get("summary", "").strip(), name
        assert len(operation.get("description", "").strip()) > 20, name
        if "requestBody" in operation:
            assert all("example" in media for media in operation["requestBody"]["content"].values())
        for status, response in operation["responses"].items():
            assert response["description"].strip(), (name, status)
            media = list(response.get("content", {}).values())
            assert media and all("example" in m for m in media), f"{name} {status} has no example"
            # common.request_context.RequestContext adds it to every answer.
            assert set(response["headers"]) == {"X-Request-ID"}, (name, status)


def test_the_postman_collection_covers_every_route_with_tests() -> None:
    collection = json.loads(COLLECTION.read_text())
    assert collection["info"]["schema"].endswith("/v2.1.0/collection.json")
    assert {v["key"] for v in collection["variable"]} >= {"baseUrl", "movieId"}
    requests = [item["request"] for folder in collection["item"] for item in folder["item"]]
    routes = {
        route_key(r["method"], re.sub(r"\{\{\w+\}\}", "{id}", "/" + "/".join(r["url"]["path"])).rstrip("/") or "/")
        for r in requests
    }
    assert documented_routes(openapi.document()) <= routes
    assert ("PATCH", "/api/movies") in routes and ("GET", "/api/billing") in routes  # 405s
    assert any(r["url"]["raw"].startswith("{{baseUrl}}/api/nothing") for r in requests)  # a 404
    assert any(r["url"]["raw"].split("?")[0].endswith("/") for r in requests if r["method"] == "POST")
    assert all(r["url"]["raw"].startswith("{{baseUrl}}/") for r in requests)
    for item in (item for folder in collection["item"] for item in folder["item"]):
        script = "\n".join(line for e in item["event"] if e["listen"] == "test" for line in e["script"]["exec"])
        assert "pm.response.to.have.status(" in script and "pm.response." in script, item["name"]


# --- bounds: each one the constant of the validation ----------------------------------------------------------------

PAGE = {"minimum": 1, "maximum": PAGE_MAX, "default": PAGE_DEFAULT}  # common.jsonapi.paging
OFFSET = {"minimum": 0, "maximum": INT_MAX}
ROW_ID = {"minimum": 1, "maximum": INT_MAX}  # an integer column: ids, user ids, counts
TITLE = {"minLength": 1, "maxLength": TITLE_MAX}
DESCRIPTION = {"maxLength": DESCRIPTION_MAX}
CENT = float(Decimal(1).scaleb(AMOUNT_MAX.as_tuple().exponent))  # the last decimal place of numeric(12,2)
BOUNDS: dict[Location, dict[str, Any]] = {
    (*MOVIES, "get", "parameters", "limit", "schema"): PAGE,
    (*MOVIES, "get", "parameters", "offset", "schema"): OFFSET,
    (*MOVIE, "parameters", "id", "schema"): ROW_ID,  # inventory_app.movies.parse_id
    (*ORDERS, "get", "parameters", "user_id", "schema"): ROW_ID,  # billing_app.api
    (*ORDERS, "get", "parameters", "limit", "schema"): PAGE,
    (*ORDERS, "get", "parameters", "offset", "schema"): OFFSET,
    **{(*SCHEMAS, name, "properties", "title"): TITLE for name in ("Movie", "NewMovie", "MovieChanges")},
    (*SCHEMAS, "Movie", "properties", "description"): DESCRIPTION,
    (*SCHEMAS, "NewMovie", "properties", "description"): {**DESCRIPTION, "default": ""},
    (*SCHEMAS, "MovieChanges", "properties", "description"): DESCRIPTION,
    (*SCHEMAS, "MovieChanges"): {"minProperties": 1},
    (*ORDER, "user_id", "oneOf", 0): ROW_ID,
    (*ORDER, "number_of_items", "oneOf", 0): ROW_ID,
    (*ORDER, "total_amount", "oneOf", 0): {"minimum": 0, "maximum": float(AMOUNT_MAX), "multipleOf": CENT},
}


def test_every_bound_in_the_document_is_the_constant_the_validation_uses() -> None:
    found = {
        (location[:-1], location[-1]): value
        for location, value in leaves(openapi.document())
        if location[-1] in BOUND_KEYWORDS and "example" not in location
    }
    expected = {(location, key): value for location, bounds in BOUNDS.items() for key, value in bounds.items()}
    assert found == expected


def test_the_bounds_that_are_not_constants_are_what_the_validation_does() -> None:
    assert validate_new({"title": "t"})["description"] == ""  # NewMovie.description's default
    assert error_body(lambda: validate_changes({}))["error"].startswith("nothing to update")  # minProperties 1
    assert error_body(lambda: validate_new({"title": ""})) == {
        "error": f"title must be 1 to {TITLE_MAX} characters long",
        "field": "title",
    }
    assert validate_new({"title": "t" * TITLE_MAX, "description": "d" * DESCRIPTION_MAX})
    assert error_body(lambda: validate_new({"title": "t", "description": "d" * (DESCRIPTION_MAX + 1)}))
    assert with_query("offset=0", paging)() == (PAGE_DEFAULT, 0)
    assert with_query(f"limit={PAGE_MAX}&offset={INT_MAX}", paging)() == (PAGE_MAX, INT_MAX)
    assert error_body(with_query(f"limit={PAGE_MAX + 1}", paging))["field"] == "limit"
    assert error_body(with_query(f"offset={INT_MAX + 1}", paging))["field"] == "offset"
    assert parse_id(str(INT_MAX)) == INT_MAX
    assert error_body(lambda: parse_id(str(INT_MAX + 1))) == {"error": "movie not found"}


# --- patterns: each one accepts exactly what the validation accepts -------------------------------------------------

INTEGERS = [
    "1", "7", "01", "007", "0", "00", "000", "", " ", "+1", "-1", "1.0", "1e3", "0x1f", "1_000", "1 2", " 8 ",
    "\t8\n", "\u30008\u2000", "\x1c8\x1f", "\x858\xa0", "\u200b8", "8\u200b", "\ufeff8", "\u0663", "\u00b2", "\uff11",
    "999999999", "1000000000", "1999999999", "2000000000", "2147483647", "02147483647", "0002147483647",
    " 2147483647\n", "2147483648", "02147483648", "2147483650", "2999999999", "9999999999", "10000000000",
    "99999999999999999999", "1" * 5000,
]  # fmt: skip
AMOUNTS = [
    *INTEGERS, "0.0", "0.00", "0.000", ".5", "5.", "1.5", "01.50", "1.05", " 1.5 ", "\u30001.25\u3000",
    "9999999999.99", "09999999999.99", "0009999999999.99", "9999999999.9", "9999999999", "10000000000.00",
    "10000000000.0", "10000000000", "9999999999.999", "9999999999.991", "99999999999", "-0", "-0.00", "+1.00",
    "1e2", "1,5", "NaN", "nan", "Infinity", "\u0661.\u0665", "0000000000000000000001.00", "1..2", "1.2.3", "1.", ".",
]  # fmt: skip
KEYS = [
    *map(chr, range(256)), "", "k" * KEY_MAX, "k" * (KEY_MAX + 1), "a b", "2b1f0d5c-0c53-4a8e-9d0e-6f1b8c2e7a44",
    "é", "key\n",
]  # fmt: skip
TEXTS = ["", "Inception", "a\x00b", "\x00", "tail\x00", "é ☃ 🎬", "\n\t", "\\x00", "%00"]
# What the code accepts, and the samples to compare with each pattern.
ORACLES: dict[str, tuple[Callable[[str], bool], list[str]]] = {
    "text": (accepted_text, TEXTS),
    "Idempotency-Key": (lambda key: IDEMPOTENCY_KEY.fullmatch(key) is not None, KEYS),
    "user_id": (lambda value: accepted_order(user_id=value), INTEGERS),
    "number_of_items": (lambda value: accepted_order(number_of_items=value), INTEGERS),
    "total_amount": (lambda value: accepted_order(total_amount=value), AMOUNTS),
}
PATTERNS: dict[Location, str] = {
    (*MOVIES, "get", "parameters", "title", "schema"): "text",  # inventory_app.routes.title_filter
    (*BILLING, "post", "parameters", "Idempotency-Key", "schema"): "Idempotency-Key",
    **{
        (*SCHEMAS, schema, "properties", field): "text"  # inventory_app.movies.check_text
        for schema in ("Movie", "NewMovie", "MovieChanges")
        for field in ("title", "description")
    },
    **{(*ORDER, name, "oneOf", 1): name for name in ("user_id", "number_of_items", "total_amount")},
}


def test_every_pattern_in_the_document_is_compared_with_the_validation() -> None:
    found = {location[:-1] for location, _ in leaves(openapi.document()) if location[-1] == "pattern"}
    assert found == set(PATTERNS)


@pytest.mark.parametrize("location", list(PATTERNS), ids=lambda loc: "/".join(map(str, loc[-4:])))
def test_the_pattern_accepts_exactly_what_the_code_accepts(location: Location) -> None:
    pattern = at(openapi.document(), location)["pattern"]
    accepts, samples = ORACLES[PATTERNS[location]]
    wrong = [s for s in samples if matches(pattern, s) != accepts(s)]
    assert not wrong, f"{pattern} and the code disagree on {[s[:20] for s in wrong]}"
    assert any(map(accepts, samples)) and not all(map(accepts, samples))


@pytest.mark.parametrize("name", ["user_id", "total_amount"])
def test_the_space_around_a_numeric_string_is_what_str_strip_removes(name: str) -> None:
    """Every character, not only samples: the pattern accepts "<c>7<c>" exactly when the order is accepted."""
    pattern = re.compile(ecma(at(openapi.document(), (*ORDER, name, "oneOf", 1, "pattern"))))
    characters = [chr(c) for c in range(sys.maxunicode + 1) if chr(c) not in string.digits]
    around = {c for c in characters if pattern.search(f"{c}7{c}")}
    # str.strip() removes the characters for which str.isspace() is true, and only those: no other one can pass.
    candidates = around | {c for c in characters if c.isspace()}
    wrong = [hex(ord(c)) for c in sorted(candidates) if (c in around) != accepted_order(**{name: f"{c}7{c}"})]
    assert not wrong
    assert " " in around and "\u200b" not in around


@pytest.mark.parametrize(
    ("name", "numbers"),
    [
        ("user_id", [0, 1, 7, INT_MAX, INT_MAX + 1, -1, True, False, None, [1], 1.5]),
        ("total_amount", [0, 1, 9999999999, 10000000000, -1, 0.5, 1.25, 1.255, 1e16, 10000000000.0, True, None]),
    ],
)
def test_the_order_schema_accepts_exactly_what_normalise_order_accepts(name: str, numbers: list[Any]) -> None:
    """The whole property, a JSON number or a numeric string. (A number with a zero fraction, 5.0, is also
    accepted as 5, which an integer schema does not say; an amount such as 0.07 is a multiple of 0.01 that
    floating-point validators may refuse: neither is sampled.)"""
    schema = OAS30Validator(at(openapi.document(), (*ORDER, name)))
    samples = [*numbers, *(AMOUNTS if name == "total_amount" else INTEGERS)]
    wrong = [s for s in samples if schema.is_valid(s) != accepted_order(**{name: s})]
    assert not wrong


# --- texts and examples: each number they state is the code's ---------------------------------------------------


def phrases() -> dict[Location, list[str]]:
    """Texts of the document that state a limit, and the words, made from the constant, they must contain."""
    limits = Limits()  # the defaults
    page = [f"{PAGE_DEFAULT} when absent, {PAGE_MAX} at most"]
    return {
        ("info", "description"): [
            f"beyond {limits.total} open connections ({limits.per_client} per client address)",
            f"take more than {limits.request_timeout} s to arrive",
        ],
        (*MOVIES, "get", "parameters", "limit", "description"): page,
        (*ORDERS, "get", "parameters", "limit", "description"): page,
        (*BILLING, "post", "parameters", "Idempotency-Key", "description"): [f"Any 1 to {KEY_MAX} visible ASCII"],
        (*ORDER, "user_id", "description"): [f"(at most {INT_MAX})"],
        (*ORDER, "number_of_items", "description"): [f"(at most {INT_MAX})"],
        (*ORDER, "total_amount", "description"): [f"(at most {AMOUNT_MAX})"],
        ("paths", "/health", "get", "description"): [f"answers 200 within {HEALTH_PROBE_TIMEOUT} s"],
    }


def responses(document: dict[str, Any], status: str) -> list[Location]:
    """The location of every response with this status."""
    return [
        ("paths", path, method, "responses", status)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters" and status in operation["responses"]
    ]


def example_location(path: Location, method: str, status: int) -> Location:
    return (*path, method, "responses", str(status), "content", JSON, "example")


def real_errors(document: dict[str, Any], max_body_bytes: int) -> dict[Location, dict[str, Any]]:
    """Error examples of the document, each with the body (without request id) the code answers."""
    app = gateway(max_body_bytes)
    order = {"user_id": "1", "number_of_items": "1", "total_amount": "9.999"}
    answers = {
        "413": call(app, "POST", "/api/billing", b" " * (max_body_bytes + 1)),
        "415": call(app, "POST", "/api/billing", b"{}", "text/csv"),
        "400": call(app, "POST", "/api/billing", json.dumps(order).encode()),
    }
    errors = {
        example_location(MOVIES, "get", 400): error_body(with_query("limit=0", paging)),
        example_location(MOVIES, "post", 400): error_body(lambda: validate_new({"title": ""})),
        example_location(MOVIE, "put", 400): error_body(lambda: validate_changes({"title": ""})),
        example_location(ORDERS, "get", 400): error_body(
            with_query("user_id=x", lambda: query_int("user_id", 1, INT_MAX))
        ),
        example_location(BILLING, "post", 400): json.loads(answers["400"][2]),
        **{
            example_location(MOVIE, method, 404): error_body(lambda: parse_id("x"))
            for method in ("get", "put", "delete")
        },
    }
    for status in ("413", "415"):
        for response in responses(document, status):
            errors[(*response, "content", JSON, "example")] = json.loads(answers[status][2])
    assert {status for status, _, _ in answers.values()} == {400, 413, 415}
    return {location: without_request_id(body) for location, body in errors.items()}


def test_every_text_that_states_a_limit_says_the_constant() -> None:
    document = openapi.document()
    for location, words in phrases().items():
        for text in words:
            assert text in at(document, location), (location, text)


@pytest.mark.parametrize("max_body_bytes", [DEFAULT_MAX_BODY_BYTES, 1024])
def test_error_examples_are_the_bodies_the_code_answers(max_body_bytes: int) -> None:
    document = openapi.document(max_body_bytes)
    errors = real_errors(document, max_body_bytes)
    for location, body in errors.items():
        example = at(document, location)
        assert without_request_id(example) == body, location
        assert "request_id" in example, location
    too_large = responses(document, "413")
    assert len(too_large) == 3
    for location in too_large:
        assert f"larger than {max_body_bytes} bytes (`MAX_BODY_BYTES`)" in at(document, location)["description"]


def test_every_number_the_code_limits_is_stated_only_where_it_is_checked() -> None:
    """A text or example that names a limit's value (100, 1000, 2147483647, ...) must be one checked above,
    so that a new mention cannot drift unnoticed. (Small numbers such as seconds are too common to trace.)"""
    limits = Limits()
    traced = {PAGE_DEFAULT, PAGE_MAX, INT_MAX, limits.total, limits.per_client, TITLE_MAX, DESCRIPTION_MAX, KEY_MAX}
    traced_texts = {str(n) for n in traced} | {str(AMOUNT_MAX), str(DEFAULT_MAX_BODY_BYTES)}
    document = openapi.document()
    too_large = [(*location, "description") for location in responses(document, "413")]
    checked = [*phrases(), *real_errors(document, DEFAULT_MAX_BODY_BYTES), *too_large]
    unchecked = []
    for location, value in leaves(document):
        if location[-1] in BOUND_KEYWORDS | {"pattern"} and "example" not in location:
            continue  # the bounds and patterns tests above
        numbers = set(re.findall(r"(?<![\w.])[0-9]+(?:\.[0-9]+)?(?![\w.])", str(value)))
        if numbers & traced_texts and not any(location[: len(c)] == c for c in checked):
            unchecked.append(location)
    assert not unchecked
