"""HTTP routes of inventory-app (SPEC §6, movies)."""

from __future__ import annotations

from typing import Any

import bottle

from common.db import DatabaseUnavailable, Pool
from common.web import ApiError, JsonApp, paging, read_json_object
from inventory_app.movies import MovieStore, parse_id, validate_changes, validate_new


def build_app(store: MovieStore, pool: Pool, max_body_bytes: int) -> JsonApp:
    app = JsonApp()

    def found(movie: dict[str, Any] | None) -> dict[str, Any]:
        if movie is None:
            raise ApiError(404, "movie not found")
        return movie

    @app.get("/api/movies")
    def list_movies() -> list[dict[str, Any]]:
        limit, offset = paging()
        return store.list(bottle.request.query.getunicode("title"), limit, offset)

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
            raise ApiError(503, "database unreachable", status="unavailable", database=str(exc)) from None
        return {"status": "ok", "database": "ok"}

    return app
