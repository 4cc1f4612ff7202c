"""HTTP routes of inventory-app: the movies API."""

from __future__ import annotations

from typing import Any

import bottle

from common.db import HTTP_ERRORS, DatabaseUnavailable, Pool
from common.jsonapi import ApiError, JsonApp, json_response, paging, read_json_object
from inventory_app.movies import MovieStore, check_text, parse_id, validate_changes, validate_new


def title_filter() -> str | None:
    """The ``?title=`` search text. Text that is not UTF-8 or holds a NUL is a 400, never "no filter"."""
    raw = bottle.request.query.get("title")  # percent-decoded as latin-1 by Bottle
    if not raw:
        return None
    try:
        text = raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise ApiError(400, "title must be UTF-8 text", field="title") from None
    check_text(text, "title")
    return text


def build_app(store: MovieStore, pool: Pool, max_body_bytes: int) -> JsonApp:
    app = JsonApp(HTTP_ERRORS)

    def found(movie: dict[str, Any] | None) -> dict[str, Any]:
        if movie is None:
            raise ApiError(404, "movie not found")
        return movie

    @app.get("/api/movies")
    def list_movies() -> list[dict[str, Any]]:
        limit, offset = paging()
        return store.list(title_filter(), limit, offset)

    @app.post("/api/movies")
    def create_movie() -> dict[str, Any]:
        return store.create(validate_new(read_json_object(max_body_bytes)))

    @app.delete("/api/movies")
    def delete_movies() -> dict[str, Any]:
        return {"deleted": store.delete_all()}

    @app.get("/api/movies/<movie_id>")
    def get_movie(movie_id: str) -> dict[str, Any]:
        return found(store.get(parse_id(movie_id)))

    @app.put("/api/movies/<movie_id>")
    def update_movie(movie_id: str) -> dict[str, Any]:
        identifier = parse_id(movie_id)
        return found(store.update(identifier, validate_changes(read_json_object(max_body_bytes))))

    @app.delete("/api/movies/<movie_id>")
    def delete_movie(movie_id: str) -> dict[str, Any]:
        return found(store.delete(parse_id(movie_id)))

    @app.get("/health")
    def health() -> Any:
        try:
            pool.ping()
        except DatabaseUnavailable as exc:
            # Not an ApiError: the health answer has its own shape, with a status field.
            body = {"status": "unavailable", "error": "database unreachable", "database": str(exc)}
            return json_response(body, 503)
        return {"status": "ok", "database": "ok"}

    return app
