"""inventory-app's movies API and its schema against the real inventory-db of the test stack.

Every route and its edge cases, mostly through the gateway and some straight to inventory-app;
the gateway's answers compared byte for byte with inventory-app's; concurrent creates; a database
outage and restart; a request in flight while inventory-app is stopped; the schema's constraints
and its trigram index.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from inventory_app.movies import _LIST_BY_TITLE, escape_like
from stack import PORT, Response, Stack, internal_http, run, wait_for

pytestmark = pytest.mark.e2e

JSON_TYPE = "application/json; charset=utf-8"
# MAX_BODY_BYTES is not set in docker-compose.yml, so the gateway and inventory-app use the default.
BODY_LIMIT = 64 * 1024
ABSENT_ID = 2**31 - 1  # a valid id that the identity column will not reach in a test run


# --- helpers ------------------------------------------------------------------------------------


def new_tag() -> str:
    """A marker that makes the titles of one test unique in the shared table."""
    return "t" + uuid.uuid4().hex[:12]


def direct(stack: Stack, method: str, path: str, **kwargs: Any) -> Response:
    """A request straight to inventory-app, bypassing the gateway."""
    return internal_http(stack, "inventory-app", method, path, **kwargs)


def create(stack: Stack, title: str, description: str | None = None) -> dict[str, Any]:
    body = {"title": title} if description is None else {"title": title, "description": description}
    answer = stack.http("POST", "/api/movies", body)
    assert answer.status == 200, answer.body
    return answer.json()


def search(stack: Stack, text: str, **params: Any) -> Response:
    return stack.http("GET", "/api/movies?" + urlencode({"title": text, **params}))


def raw_request(method: str, path: str, body: Any, headers: dict[str, str], **options: Any) -> Response:
    """A request through the gateway with exactly these headers (urllib would add a Content-Type)."""
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers, **options)
        answer = conn.getresponse()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
    finally:
        conn.close()


def titles(answer: Response) -> list[str]:
    assert answer.status == 200, answer.body
    return [movie["title"] for movie in answer.json()]


def assert_json_error(answer: Response, status: int) -> dict[str, Any]:
    """The answer is the given error status with a JSON {"error": ...} body: no HTML, no traceback."""
    assert answer.status == status, (answer.status, answer.body)
    assert answer.headers.get("content-type") == JSON_TYPE, answer.headers
    text = answer.body.decode("utf-8")
    assert "Traceback" not in text and "<html" not in text.lower()
    body = json.loads(text)
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    return body


def count_rows(stack: Stack, title_prefix: str) -> int:
    return int(stack.psql("inventory-db", f"SELECT count(*) FROM movies WHERE starts_with(title, '{title_prefix}')"))


def app_process(stack: Stack) -> tuple[str, str, str]:
    """What changes if inventory-app is restarted: the container's start time and restart count,
    and the pid supervisor gave the program."""
    pid = stack.exec("inventory-app", "supervisorctl", "pid", "inventory-app:inventory-app-0").stdout.strip()
    assert pid.isdigit(), pid
    return (
        stack.inspect("inventory-app", "{{.State.StartedAt}}"),
        stack.inspect("inventory-app", "{{.RestartCount}}"),
        pid,
    )


def restore_healthy(stack: Stack, *services: str) -> None:
    """Start stopped containers again and wait for the whole stack to be healthy."""
    for service in services:
        if stack.inspect(service, "{{.State.Running}}") != "true":
            run("docker", "start", stack.container(service))
    stack.wait_healthy(timeout=180)


# --- listing and searching ----------------------------------------------------------------------


def test_the_list_is_ordered_by_id_and_holds_every_created_movie(stack: Stack) -> None:
    tag = new_tag()
    created = [create(stack, f"{tag} {name}") for name in ("Zulu", "Alpha", "Mike")]
    answer = stack.http("GET", "/api/movies")
    assert answer.status == 200 and answer.headers["content-type"] == JSON_TYPE
    listed = answer.json()
    ids = [movie["id"] for movie in listed]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [m for m in listed if m["title"].startswith(tag)] == created
    assert all(set(movie) == {"id", "title", "description"} for movie in listed)


def test_title_search_is_a_case_insensitive_substring_match_including_accented_letters(stack: Stack) -> None:
    tag = new_tag()
    amelie = create(stack, f"{tag} Le Fabuleux Destin d'Amélie Poulain")
    create(stack, f"{tag} Amelie without accent")
    assert search(stack, f"{tag.upper()} LE FABULEUX").json() == [amelie]
    assert titles(search(stack, "AMÉ")).count(amelie["title"]) == 1
    assert f"{tag} Amelie without accent" not in titles(search(stack, "AMÉ"))
    assert titles(search(stack, f"{tag} amelie")) == [f"{tag} Amelie without accent"]
    assert titles(search(stack, "dESTIN d'amÉLIE")).count(amelie["title"]) == 1
    assert search(stack, f"{tag} nothing like this").json() == []
    # An empty search is no filter at all.
    assert tag in json.dumps(stack.http("GET", "/api/movies?title=").json())


def test_percent_and_underscore_in_a_search_are_taken_literally(stack: Stack) -> None:
    tag = new_tag()
    create(stack, f"{tag} 100% pure")
    create(stack, f"{tag} 1000 pure")
    create(stack, f"{tag} a_b")
    create(stack, f"{tag} axb")
    assert titles(search(stack, f"{tag} 100%")) == [f"{tag} 100% pure"]
    assert titles(search(stack, f"{tag} 100")) == [f"{tag} 100% pure", f"{tag} 1000 pure"]
    assert titles(search(stack, f"{tag} a_b")) == [f"{tag} a_b"]
    assert titles(search(stack, f"{tag} a_")) == [f"{tag} a_b"]
    assert titles(search(stack, f"{tag} %")) == []
    assert titles(search(stack, f"{tag} _")) == []


def test_quotes_semicolons_and_backslashes_are_stored_and_found_verbatim(stack: Stack) -> None:
    tag = new_tag()
    nasty = [
        f"{tag} Robert'); DROP TABLE movies;--",
        f'{tag} say "hello"; SELECT 1',
        f"{tag} back\\slash \\% \\_ \\\\",
        f"{tag} $$dollar$$ E'\\x41' /* comment */",
    ]
    for title in nasty:
        movie = create(stack, title, description=title)
        assert movie["title"] == title and movie["description"] == title
        assert stack.http("GET", f"/api/movies/{movie['id']}").json() == movie
    assert titles(search(stack, "'); DROP TABLE movies;--")).count(nasty[0]) == 1
    assert titles(search(stack, f'{tag} say "hello"; SELECT')) == [nasty[1]]
    assert titles(search(stack, "back\\slash \\% \\_ \\\\")) == [nasty[2]]
    assert titles(search(stack, f"{tag} back\\")) == [nasty[2]]
    assert titles(search(stack, "$$dollar$$ E'\\x41'")) == [nasty[3]]
    # Stored as sent, seen the operator's way too.
    stored = stack.psql("inventory-db", f"SELECT title FROM movies WHERE starts_with(title, '{tag}') ORDER BY id")
    assert stored.split("\n") == nasty
    assert stack.psql("inventory-db", "SELECT to_regclass('movies') IS NOT NULL") == "t"


@pytest.mark.parametrize("query", ["title=%FF", "title=%ED%A0%80", "title=ab%00cd"])
def test_a_search_that_is_not_utf8_text_is_400_not_an_unfiltered_list(stack: Stack, query: str) -> None:
    body = assert_json_error(stack.http("GET", f"/api/movies?{query}"), 400)
    assert body["field"] == "title"


def test_limit_and_offset_page_through_the_list(stack: Stack) -> None:
    tag = new_tag()
    created = [create(stack, f"{tag} page {n}")["title"] for n in range(5)]
    assert titles(search(stack, tag, limit=2)) == created[:2]
    assert titles(search(stack, tag, limit=2, offset=2)) == created[2:4]
    assert titles(search(stack, tag, limit=2, offset=4)) == created[4:]
    assert titles(search(stack, tag, offset=0)) == created
    assert titles(search(stack, tag, offset=3)) == created[3:]
    assert titles(search(stack, tag, offset=5)) == []
    assert titles(search(stack, tag, limit=1000)) == created
    assert titles(search(stack, tag, offset=2**31 - 1)) == []
    assert len(stack.http("GET", "/api/movies?limit=1").json()) == 1


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=-1",
        "limit=abc",
        "limit=1.5",
        "limit=1001",
        "limit=99999999999999999999",
        "limit=%EF%BC%91",  # a full-width digit one
        "offset=-1",
        "offset=x",
        "offset=2147483648",
    ],
)
def test_an_invalid_limit_or_offset_is_400(stack: Stack, query: str) -> None:
    body = assert_json_error(stack.http("GET", f"/api/movies?{query}"), 400)
    assert body["field"] == query.split("=")[0]


# --- creating -----------------------------------------------------------------------------------


def test_create_answers_200_with_the_stored_movie_and_a_default_empty_description(stack: Stack) -> None:
    tag = new_tag()
    answer = stack.http("POST", "/api/movies", {"title": f"{tag} Alien"})
    assert answer.status == 200 and answer.headers["content-type"] == JSON_TYPE
    movie = answer.json()
    assert set(movie) == {"id", "title", "description"} and isinstance(movie["id"], int)
    assert movie["title"] == f"{tag} Alien" and movie["description"] == ""
    assert stack.http("GET", f"/api/movies/{movie['id']}").json() == movie
    row = stack.psql("inventory-db", f"SELECT id, title, description FROM movies WHERE id = {movie['id']}")
    assert row == f"{movie['id']}|{tag} Alien|"
    with_description = create(stack, f"{tag} Aliens", "The sequel.")
    assert with_description["description"] == "The sequel." and with_description["id"] > movie["id"]


@pytest.mark.parametrize(
    "text",
    [
        "Amélie",
        "千と千尋の神隠し",
        "שלום עולם",
        "🎬🍿 emoji",
        "e\u0301 combining accent",
        "👩‍👩‍👧 family (zero-width joiners)",
        "line\nbreak\ttab \u2028 separator",
        "Ωmega ß İ ǅ",
    ],
)
def test_unicode_titles_and_descriptions_round_trip_unchanged(stack: Stack, text: str) -> None:
    tag = new_tag()
    movie = create(stack, f"{tag} {text}", text)
    assert movie["title"] == f"{tag} {text}" and movie["description"] == text
    assert stack.http("GET", f"/api/movies/{movie['id']}").json() == movie
    assert direct(stack, "GET", f"/api/movies/{movie['id']}").json() == movie
    assert search(stack, f"{tag} {text}").json() == [movie]


@pytest.mark.parametrize("char", ["x", "é", "🎬"])
def test_a_title_of_255_characters_is_accepted_and_256_is_400(stack: Stack, char: str) -> None:
    longest = create(stack, char * 255)
    assert longest["title"] == char * 255
    assert stack.psql("inventory-db", f"SELECT char_length(title) FROM movies WHERE id = {longest['id']}") == "255"
    body = assert_json_error(stack.http("POST", "/api/movies", {"title": char * 256}), 400)
    assert body["field"] == "title"
    assert stack.psql("inventory-db", f"SELECT count(*) FROM movies WHERE title = '{char * 255}'") == "1"
    assert stack.http("DELETE", f"/api/movies/{longest['id']}").status == 200


def test_a_description_of_10000_characters_is_accepted_and_10001_is_400(stack: Stack) -> None:
    tag = new_tag()
    movie = create(stack, f"{tag} long", "d" * 10_000)
    assert len(movie["description"]) == 10_000
    body = assert_json_error(
        stack.http("POST", "/api/movies", {"title": f"{tag} too long", "description": "d" * 10_001}), 400
    )
    assert body["field"] == "description"
    assert count_rows(stack, tag) == 1


def test_unknown_fields_are_400_and_named_in_the_answer(stack: Stack) -> None:
    tag = new_tag()
    answer = stack.http("POST", "/api/movies", {"title": tag, "year": 1979, "rating": 5})
    body = assert_json_error(answer, 400)
    assert body["fields"] == ["rating", "year"]
    assert "rating" in body["error"] and "year" in body["error"]
    # The id is the database's to choose.
    assert assert_json_error(stack.http("POST", "/api/movies", {"title": tag, "id": 1}), 400)["fields"] == ["id"]
    assert count_rows(stack, tag) == 0


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"description": "no title"},
        {"title": ""},
        {"title": None},
        {"title": 5},
        {"title": 1.5},
        {"title": True},
        {"title": ["a list"]},
        {"title": {"an": "object"}},
        {"title": "ok", "description": None},
        {"title": "ok", "description": 3},
        {"title": "ok", "description": ["x"]},
        {"title": "nul\u0000byte"},
        {"title": "ok", "description": "nul\u0000byte"},
    ],
    ids=lambda body: json.dumps(body),
)
def test_a_missing_or_mistyped_field_is_400_and_nothing_is_stored(stack: Stack, body: dict[str, Any]) -> None:
    before = stack.psql("inventory-db", "SELECT count(*) FROM movies")
    assert_json_error(stack.http("POST", "/api/movies", body), 400)
    assert stack.psql("inventory-db", "SELECT count(*) FROM movies") == before


DEEP = b'{"title": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   \n",
        b"{",
        b'{"title": "unterminated}',
        b"{'title': 'single quotes'}",
        b'{"title": "x",}',
        b"[]",
        b'["title"]',
        b'"title"',
        b"null",
        b"42",
        b'{"title": NaN}',
        b'{"title": Infinity}',
        b'{"title": "caf\xe9"}',  # latin-1, not UTF-8
        b'{"title": "\xff\xfe"}',
        b'{"title": "\\ud800 lone surrogate"}',
        b'\xef\xbb\xbf{"title": "byte order mark"}',
        DEEP,
    ],
    ids=lambda raw: raw[:40].decode("latin-1"),
)
def test_an_empty_malformed_or_undecodable_body_is_400(stack: Stack, raw: bytes) -> None:
    before = stack.psql("inventory-db", "SELECT count(*) FROM movies")
    assert len(raw) <= BODY_LIMIT
    answer = stack.http("POST", "/api/movies", raw=raw, headers={"Content-Type": "application/json"})
    assert_json_error(answer, 400)
    assert stack.psql("inventory-db", "SELECT count(*) FROM movies") == before


def test_a_lone_surrogate_does_not_break_later_requests(stack: Stack) -> None:
    """A title pg8000 cannot encode used to leave the pooled connection half-way through a query,
    so the next requests on it failed (500) or answered with another request's rows."""
    tag = new_tag()
    for _ in range(3):
        raw = b'{"title": "' + tag.encode() + b' \\udc80"}'
        assert_json_error(stack.http("POST", "/api/movies", raw=raw, headers={"Content-Type": "application/json"}), 400)
    created = [create(stack, f"{tag} after {n}") for n in range(10)]
    assert [m["title"] for m in created] == [f"{tag} after {n}" for n in range(10)]
    assert titles(search(stack, tag)) == [m["title"] for m in created]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "text/json"])
def test_a_write_whose_body_is_not_declared_json_is_415(stack: Stack, content_type: str | None) -> None:
    tag = new_tag()
    movie = create(stack, tag)
    headers = {"Content-Type": content_type} if content_type else {}
    raw = json.dumps({"title": f"{tag} changed"}).encode()
    assert_json_error(raw_request("POST", "/api/movies", raw, headers), 415)
    assert_json_error(raw_request("PUT", f"/api/movies/{movie['id']}", raw, headers), 415)
    assert titles(search(stack, tag)) == [tag]


def test_a_json_content_type_with_parameters_or_capitals_is_accepted(stack: Stack) -> None:
    tag = new_tag()
    for content_type in ("application/json; charset=utf-8", "Application/JSON"):
        answer = stack.http(
            "POST", "/api/movies", raw=json.dumps({"title": tag}).encode(), headers={"Content-Type": content_type}
        )
        assert answer.status == 200, answer.body
    assert count_rows(stack, tag) == 2


def padded_body(title: str, size: int) -> bytes:
    """A valid JSON movie of exactly ``size`` bytes (padded with whitespace)."""
    raw = json.dumps({"title": title}).encode()
    return raw[:-1] + b" " * (size - len(raw)) + b"}"


def test_a_body_above_the_limit_is_413_json_and_one_at_the_limit_is_read(stack: Stack) -> None:
    tag = new_tag()
    at_limit = padded_body(f"{tag} at the limit", BODY_LIMIT)
    above = padded_body(f"{tag} above the limit", BODY_LIMIT + 1)
    json_header = {"Content-Type": "application/json"}
    for send in (stack.http, lambda *a, **k: direct(stack, *a, **k)):
        assert send("POST", "/api/movies", raw=at_limit, headers=json_header).status == 200
        body = assert_json_error(send("POST", "/api/movies", raw=above, headers=json_header), 413)
        assert body["limit"] == BODY_LIMIT
    # A much bigger body, and one sent in chunks without a Content-Length.
    assert_json_error(stack.http("POST", "/api/movies", raw=b"{" + b" " * 1_000_000 + b"}", headers=json_header), 413)
    chunks = iter([above[:40_000], above[40_000:]])
    assert_json_error(raw_request("POST", "/api/movies", chunks, json_header, encode_chunked=True), 413)
    assert titles(search(stack, tag)) == [f"{tag} at the limit", f"{tag} at the limit"]


# --- one movie: GET, PUT, DELETE ----------------------------------------------------------------


@pytest.mark.parametrize(
    "movie_id",
    [
        str(ABSENT_ID),
        "0",
        "abc",
        "1.5",
        "-1",
        "+1",
        "1e3",
        "0x10",
        "99999999999999999999",
        "2147483648",
        "%EF%BC%91",
        "%20",
    ],
)
def test_get_put_and_delete_of_an_absent_or_non_integer_id_are_404(stack: Stack, movie_id: str) -> None:
    path = f"/api/movies/{movie_id}"
    assert_json_error(stack.http("GET", path), 404)
    assert_json_error(stack.http("PUT", path, {"title": "never stored"}), 404)
    assert_json_error(stack.http("DELETE", path), 404)
    assert stack.psql("inventory-db", "SELECT count(*) FROM movies WHERE title = 'never stored'") == "0"


def test_put_changes_only_the_given_field(stack: Stack) -> None:
    tag = new_tag()
    movie = create(stack, f"{tag} Old title", "Old description")
    answer = stack.http("PUT", f"/api/movies/{movie['id']}", {"title": f"{tag} New title"})
    assert answer.status == 200 and answer.headers["content-type"] == JSON_TYPE
    assert answer.json() == {"id": movie["id"], "title": f"{tag} New title", "description": "Old description"}
    answer = stack.http("PUT", f"/api/movies/{movie['id']}", {"description": ""})
    assert answer.json() == {"id": movie["id"], "title": f"{tag} New title", "description": ""}
    answer = stack.http("PUT", f"/api/movies/{movie['id']}", {"title": f"{tag} Both", "description": "Both"})
    assert answer.json() == {"id": movie["id"], "title": f"{tag} Both", "description": "Both"}
    assert stack.http("GET", f"/api/movies/{movie['id']}").json() == answer.json()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"rating": 5},
        {"title": ""},
        {"title": None},
        {"title": "x" * 256},
        {"description": 1},
        {"title": "ok", "id": 9},
    ],
    ids=lambda body: json.dumps(body)[:40],
)
def test_put_without_a_valid_change_is_400_and_changes_nothing(stack: Stack, body: dict[str, Any]) -> None:
    movie = create(stack, new_tag(), "unchanged")
    assert_json_error(stack.http("PUT", f"/api/movies/{movie['id']}", body), 400)
    assert stack.http("GET", f"/api/movies/{movie['id']}").json() == movie


def test_put_with_a_malformed_body_is_400(stack: Stack) -> None:
    movie = create(stack, new_tag())
    for raw in (b"", b"{", b"[]", b'{"title": "\xff"}', DEEP):
        answer = stack.http("PUT", f"/api/movies/{movie['id']}", raw=raw, headers={"Content-Type": "application/json"})
        assert_json_error(answer, 400)
    assert stack.http("GET", f"/api/movies/{movie['id']}").json() == movie


def test_delete_of_one_movie_returns_it_and_it_is_gone(stack: Stack) -> None:
    tag = new_tag()
    movie = create(stack, f"{tag} to delete", "bye")
    keep = create(stack, f"{tag} to keep")
    answer = stack.http("DELETE", f"/api/movies/{movie['id']}")
    assert answer.status == 200 and answer.headers["content-type"] == JSON_TYPE
    assert answer.json() == movie
    assert_json_error(stack.http("GET", f"/api/movies/{movie['id']}"), 404)
    assert_json_error(stack.http("DELETE", f"/api/movies/{movie['id']}"), 404)
    assert_json_error(stack.http("PUT", f"/api/movies/{movie['id']}", {"title": "back"}), 404)
    assert search(stack, tag).json() == [keep]


# --- HTTP protocol details ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/api/movies", "DELETE,GET,POST"),
        ("PATCH", "/api/movies", "DELETE,GET,POST"),
        ("POST", "/api/movies/1", "DELETE,GET,PUT"),
        ("PATCH", "/api/movies/1/", "DELETE,GET,PUT"),
    ],
)
def test_a_wrong_method_is_405_with_allow(stack: Stack, method: str, path: str, allow: str) -> None:
    for answer in (stack.http(method, path, raw=b""), direct(stack, method, path, raw=b"")):
        assert_json_error(answer, 405)
        assert answer.headers["allow"] == allow


def test_every_route_accepts_a_trailing_slash(stack: Stack) -> None:
    tag = new_tag()
    answer = stack.http("POST", "/api/movies/", {"title": f"{tag} slash"})
    assert answer.status == 200, answer.body
    movie = answer.json()
    assert stack.http("GET", "/api/movies/?" + urlencode({"title": tag})).json() == [movie]
    assert stack.http("GET", f"/api/movies/{movie['id']}/").json() == movie
    changed = stack.http("PUT", f"/api/movies/{movie['id']}/", {"description": "changed"})
    assert changed.status == 200 and changed.json()["description"] == "changed"
    assert stack.http("DELETE", f"/api/movies/{movie['id']}/").json()["id"] == movie["id"]
    assert direct(stack, "GET", "/health/").json()["status"] == "ok"
    assert direct(stack, "GET", f"/api/movies/{movie['id']}/").status == 404
    # DELETE /api/movies/ is in test_delete_of_all_movies_returns_the_count_and_empties_the_list.


def test_error_answers_are_json_even_for_unknown_routes(stack: Stack) -> None:
    for answer in (
        direct(stack, "GET", "/nothing-here"),
        direct(stack, "GET", "/api/movies/1/extra"),
        direct(stack, "GET", "/api"),
        stack.http("GET", "/api/movies/1/extra"),
    ):
        assert_json_error(answer, 404)


def test_answers_carry_the_request_id(stack: Stack) -> None:
    answer = stack.http("GET", f"/api/movies/{ABSENT_ID}", headers={"X-Request-ID": "inventory-rid-1"})
    assert answer.headers["x-request-id"] == "inventory-rid-1"
    assert assert_json_error(answer, 404)["request_id"] == "inventory-rid-1"


# --- the gateway is transparent -----------------------------------------------------------------


def test_the_gateway_answers_byte_for_byte_what_inventory_app_answers(stack: Stack) -> None:
    """A fixed script of reads and refused writes, sent once through the gateway and once straight
    to inventory-app with the same request id: same status, body bytes, content type (and Allow)."""
    tag = new_tag()
    first = create(stack, f"{tag} Première", "desc «1»")
    create(stack, f"{tag} 50% off_sale", "desc 2")
    create(stack, f"{tag} third", "")
    json_header = {"Content-Type": "application/json"}
    script: list[tuple[str, str, bytes | None, dict[str, str]]] = [
        ("GET", "/api/movies?" + urlencode({"title": tag}), None, {}),
        ("GET", "/api/movies/?" + urlencode({"title": tag, "limit": 2, "offset": 1}), None, {}),
        ("GET", "/api/movies?title=" + quote(f"{tag.upper()} PREMIÈRE"), None, {}),
        ("GET", "/api/movies?title=" + quote("50% off_"), None, {}),
        ("GET", f"/api/movies/{first['id']}", None, {}),
        ("GET", f"/api/movies/{first['id']}/", None, {}),
        ("GET", f"/api/movies/{ABSENT_ID}", None, {}),
        ("GET", "/api/movies/abc", None, {}),
        ("GET", "/api/movies?limit=0", None, {}),
        ("GET", "/api/movies?title=%FF", None, {}),
        ("POST", "/api/movies", b'{"title": ', json_header),
        ("POST", "/api/movies", b'{"title": "x", "year": 1}', json_header),
        ("POST", "/api/movies/", b'{"title": ""}', json_header),
        ("POST", "/api/movies", b'{"title": "x"}', {"Content-Type": "text/plain"}),
        ("POST", "/api/movies", padded_body("too big", BODY_LIMIT + 1), json_header),
        ("PUT", f"/api/movies/{first['id']}", b"{}", json_header),
        ("PUT", f"/api/movies/{ABSENT_ID}", b'{"title": "x"}', json_header),
        ("DELETE", "/api/movies/1.5", None, {}),
        ("PATCH", "/api/movies", None, {}),
        ("POST", f"/api/movies/{first['id']}", None, {}),
    ]
    compared = 0
    for number, (method, path, raw, headers) in enumerate(script):
        headers = {**headers, "X-Request-ID": f"contract-{tag}-{number}"}
        via_gateway = stack.http(method, path, raw=raw, headers=headers)
        straight = direct(stack, method, path, raw=raw, headers=headers)
        step = f"{method} {path}"
        assert via_gateway.status == straight.status, step
        assert via_gateway.body == straight.body, step
        assert via_gateway.headers["content-type"] == straight.headers["content-type"] == JSON_TYPE, step
        assert via_gateway.headers.get("allow") == straight.headers.get("allow"), step
        compared += 1
    assert compared == len(script)
    assert count_rows(stack, tag) == 3


# --- concurrency ----------------------------------------------------------------------------------


def test_concurrent_creates_are_all_stored_with_distinct_ids(stack: Stack) -> None:
    tag = new_tag()
    threads, per_thread = 20, 25

    def worker(number: int) -> list[tuple[int, int | None]]:
        results = []
        for n in range(per_thread):
            answer = stack.http("POST", "/api/movies", {"title": f"{tag} {number}-{n}"}, timeout=60)
            results.append((answer.status, answer.json().get("id") if answer.status == 200 else None))
        return results

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        results = [r for batch in pool.map(worker, range(threads)) for r in batch]
    elapsed = time.monotonic() - started
    print(f"\n{len(results)} creates from {threads} threads in {elapsed:.1f}s ({len(results) / elapsed:.0f}/s)")
    assert [status for status, _ in results] == [200] * (threads * per_thread)
    ids = [movie_id for _, movie_id in results]
    assert len(set(ids)) == threads * per_thread
    assert count_rows(stack, tag) == threads * per_thread
    stored = stack.psql("inventory-db", f"SELECT id FROM movies WHERE starts_with(title, '{tag}')")
    assert sorted(int(i) for i in stored.split()) == sorted(ids)


# --- the schema -----------------------------------------------------------------------------------


def psql_error(stack: Stack, sql: str) -> str:
    """Run SQL as the postgres superuser, expecting it to fail; return the error."""
    db = stack.env["INVENTORY_DB_NAME"]
    result = stack.exec(
        "inventory-db",
        "psql",
        "-X",
        "-q",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        db,
        "-c",
        sql,
        user="postgres",
        check=False,
    )
    assert result.returncode != 0, f"{sql!r} succeeded: {result.stdout}"
    return result.stderr


def test_the_database_constraints_mirror_the_api_validation(stack: Stack) -> None:
    """Even the superuser, bypassing the API, cannot store what the API refuses."""
    tag = new_tag()
    assert "value too long for type character varying(255)" in psql_error(
        stack, "INSERT INTO movies (title) VALUES (repeat('x', 256))"
    )
    assert 'violates check constraint "movies_title_check"' in psql_error(
        stack, "INSERT INTO movies (title) VALUES ('')"
    )
    error = psql_error(stack, "INSERT INTO movies (title) VALUES (NULL)")
    assert 'null value in column "title"' in error and "violates not-null constraint" in error
    error = psql_error(stack, f"INSERT INTO movies (title, description) VALUES ('{tag}', NULL)")
    assert 'null value in column "description"' in error
    assert 'violates check constraint "movies_description_check"' in psql_error(
        stack, f"INSERT INTO movies (title, description) VALUES ('{tag}', repeat('d', 10001))"
    )
    assert 'cannot insert a non-DEFAULT value into column "id"' in psql_error(
        stack, f"INSERT INTO movies (id, title) VALUES (424242, '{tag}')"
    )
    # The limits themselves are allowed, and the description defaults to ''.
    stack.psql("inventory-db", f"INSERT INTO movies (title) VALUES ('{tag}' || repeat('é', 255 - {len(tag)}))")
    assert stack.psql("inventory-db", f"SELECT description = '' FROM movies WHERE starts_with(title, '{tag}')") == "t"
    stack.psql("inventory-db", f"DELETE FROM movies WHERE starts_with(title, '{tag}')")


@pytest.fixture
def large_table(stack: Stack) -> Iterator[str]:
    """20,000 extra movies seeded by the operator's way in; removed afterwards."""
    tag = new_tag()
    stack.psql(
        "inventory-db",
        f"INSERT INTO movies (title) SELECT '{tag} ' || md5(i::text) FROM generate_series(1, 20000) AS i;"
        " ANALYZE movies",
    )
    try:
        yield tag
    finally:
        stack.psql("inventory-db", f"DELETE FROM movies WHERE starts_with(title, '{tag}'); ANALYZE movies")


def test_title_search_uses_the_trigram_index_on_a_large_table(stack: Stack, large_table: str) -> None:
    digest = hashlib.md5(b"12345", usedforsecurity=False).hexdigest()  # the title of seeded row 12345
    needle = digest[4:14]
    pattern = "'" + escape_like(needle).replace("'", "''") + "'"
    # The very statement inventory-app runs, with the values it binds written in.
    sql = _LIST_BY_TITLE.replace(":pattern", pattern).replace(":limit", "NULL").replace(":offset", "0")
    plan = stack.psql("inventory-db", "EXPLAIN " + sql)
    print("\n" + plan)
    assert "Bitmap Index Scan on movies_title_trgm_idx" in plan
    started = time.monotonic()
    found = search(stack, needle.upper())
    elapsed = time.monotonic() - started
    print(
        f"search among {int(stack.psql('inventory-db', 'SELECT count(*) FROM movies'))} movies: {elapsed * 1000:.0f} ms"
    )
    assert titles(found) == [f"{large_table} {digest}"]


# --- DELETE /api/movies (empties the table: the tests below do not rely on earlier rows) ---------------


def test_delete_of_all_movies_returns_the_count_and_empties_the_list(stack: Stack) -> None:
    tag = new_tag()
    create(stack, f"{tag} one")
    create(stack, f"{tag} two")
    total = int(stack.psql("inventory-db", "SELECT count(*) FROM movies"))
    answer = stack.http("DELETE", "/api/movies/")
    assert answer.status == 200 and answer.headers["content-type"] == JSON_TYPE
    assert answer.json() == {"deleted": total}
    assert stack.http("GET", "/api/movies").json() == []
    assert stack.psql("inventory-db", "SELECT count(*) FROM movies") == "0"
    assert stack.http("DELETE", "/api/movies").json() == {"deleted": 0}
    # The table is usable afterwards and ids keep growing.
    assert create(stack, f"{tag} after")["id"] > 0


# --- failures -----------------------------------------------------------------------------------


class RequestLoop:
    """GETs one movie through the gateway, one request after another, in a background thread."""

    def __init__(self, stack: Stack, path: str) -> None:
        self.stack = stack
        self.path = path
        self.answers: list[tuple[float, float, Response]] = []  # (sent at, seconds, answer)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            answer = self.stack.http("GET", self.path, timeout=60)
            self.answers.append((sent, time.monotonic() - sent, answer))
            time.sleep(0.05)

    def __enter__(self) -> RequestLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=90)

    def statuses_since(self, moment: float) -> list[int]:
        return [answer.status for sent, _, answer in list(self.answers) if sent >= moment]


def test_a_database_outage_answers_503_quickly_and_service_resumes_without_restarting_the_app(stack: Stack) -> None:
    movie = create(stack, f"{new_tag()} survives the outage")
    path = f"/api/movies/{movie['id']}"
    before = app_process(stack)
    with RequestLoop(stack, path) as loop:
        wait_for(lambda: loop.statuses_since(0).count(200) >= 3, 30, what="requests to flow")
        stopped_at = time.monotonic()
        run("docker", "stop", stack.container("inventory-db"))
        try:
            wait_for(lambda: loop.statuses_since(time.monotonic() - 5).count(503) >= 3, 60, what="503 answers")
            health = direct(stack, "GET", "/health")
            assert_json_error(health, 503)
            assert health.json()["status"] == "unavailable"
            answer = stack.http("POST", "/api/movies", {"title": "during the outage"})
            assert assert_json_error(answer, 503)["error"] == "database unavailable, try again shortly"
        finally:
            run("docker", "start", stack.container("inventory-db"))
        started_at = time.monotonic()
        wait_for(lambda: loop.statuses_since(started_at).count(200) >= 3, 90, what="the service to resume")
    resumed_after = next(sent + took for sent, took, a in loop.answers if sent >= started_at and a.status == 200)
    outage = [(took, answer) for sent, took, answer in loop.answers if sent >= stopped_at and answer.status != 200]
    print(
        f"\n{len(loop.answers)} requests; {len(outage)} refused during the outage, slowest in "
        f"{max(took for took, _ in outage):.2f}s; first 200 {resumed_after - started_at:.1f}s after docker start"
    )
    assert {answer.status for _, _, answer in loop.answers} <= {200, 503}
    for took, answer in outage:
        assert_json_error(answer, 503)
        assert took < 10
    stack.wait_healthy("inventory-db", "inventory-app", "api-gateway-app")
    assert app_process(stack) == before, "inventory-app was restarted"
    assert stack.http("GET", path).json() == movie
    assert stack.psql("inventory-db", "SELECT count(*) FROM movies WHERE title = 'during the outage'") == "0"


def test_pooled_connections_are_replaced_transparently_after_a_database_restart(stack: Stack) -> None:
    """After `docker restart inventory-db`, the pool holds connections to the old server: the first
    requests must replace them rather than fail."""
    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(lambda _: stack.http("GET", "/api/movies?limit=1").status, range(48))) == {200}
    pooled = int(
        stack.psql("inventory-db", "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'inventory-app'")
    )
    before = app_process(stack)
    try:
        run("docker", "restart", stack.container("inventory-db"))
        stack.wait_healthy("inventory-db")
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda n: stack.http("POST", "/api/movies", {"title": f"after restart {n}"}), range(8))
            )
    finally:
        restore_healthy(stack, "inventory-db")
    print(f"\n{pooled} pooled connections before the restart")
    assert pooled >= 2
    assert [answer.status for answer in answers] == [200] * 8, [a.body for a in answers]
    assert app_process(stack) == before
    stack.psql("inventory-db", "DELETE FROM movies WHERE starts_with(title, 'after restart ')")


# Sent from the gateway's container (on the backend network) to inventory-app: a POST whose body
# arrives in two parts. The script says "partial" after the first part, waits for a line on stdin,
# sends the rest, and prints the raw answer as a JSON string.
_SLOW_UPLOAD = """
import json, socket, sys
body = json.dumps({"title": sys.argv[1]}).encode()
conn = socket.create_connection(("inventory-app", 8080), timeout=60)
head = ("POST /api/movies HTTP/1.1\\r\\nHost: inventory-app\\r\\nContent-Type: application/json\\r\\n"
        f"Content-Length: {len(body)}\\r\\nConnection: close\\r\\n\\r\\n").encode()
conn.sendall(head + body[:-8])
print("partial", flush=True)
sys.stdin.readline()
conn.sendall(body[-8:])
answer = b""
while chunk := conn.recv(65536):
    answer += chunk
print(json.dumps(answer.decode("utf-8")), flush=True)
"""

_CONNECT = """
import socket
try:
    socket.create_connection(("inventory-app", 8080), timeout=3).close()
    print("accepted")
except OSError as exc:
    print(type(exc).__name__)
"""


def test_a_request_in_flight_during_docker_stop_still_completes(stack: Stack) -> None:
    """Deterministic in-flight request: its headers and half its body reach inventory-app before
    `docker stop`; the rest is sent only once inventory-app has logged SIGTERM. A graceful stop
    finishes it (200, stored) and refuses new connections meanwhile."""
    title = f"{new_tag()} finished during shutdown"
    client = subprocess.Popen(
        ["docker", "exec", "-i", stack.container("api-gateway-app"), "python", "-c", _SLOW_UPLOAD, title],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    stopper: subprocess.Popen[str] | None = None
    try:
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline().strip() == "partial"
        since = str(int(time.time()) - 1)
        stopper = subprocess.Popen(
            ["docker", "stop", stack.container("inventory-app")], text=True, stdout=subprocess.PIPE
        )

        def sigterm_logged() -> bool:
            logs = run("docker", "logs", "--since", since, stack.container("inventory-app"))
            return "received SIGTERM, finishing in-flight requests" in logs.stdout + logs.stderr

        wait_for(sigterm_logged, 30, interval=0.2, what="inventory-app to receive SIGTERM")
        refused = wait_for(
            lambda: (
                (out := stack.exec("api-gateway-app", "python", "-c", _CONNECT).stdout.strip()) != "accepted" and out
            ),
            8,
            interval=0.2,
            what="new connections to be refused",
        )
        client.stdin.write("go\n")
        client.stdin.flush()
        raw_answer = json.loads(client.stdout.readline())
        assert stopper.wait(timeout=60) == 0
        exit_code = stack.inspect("inventory-app", "{{.State.ExitCode}}")
    finally:
        client.kill()
        if stopper is not None:
            stopper.wait(timeout=60)
        restore_healthy(stack, "inventory-app")
    print(f"\nnew connection during the stop: {refused}; exit code {exit_code}")
    assert refused == "ConnectionRefusedError"
    assert exit_code == "0"
    status_line, _, rest = raw_answer.partition("\r\n")
    assert status_line == "HTTP/1.1 200 OK", raw_answer
    movie = json.loads(rest.split("\r\n\r\n", 1)[1])
    assert movie["title"] == title
    assert stack.inspect("inventory-app", "{{.State.Running}}") == "true"
    assert stack.http("GET", f"/api/movies/{movie['id']}").json() == movie
