"""Validation of movie input (inventory-app)."""

from __future__ import annotations

import pytest

from common.jsonapi import ApiError
from inventory_app.movies import escape_like, parse_id, validate_changes, validate_new


def test_new_movie_defaults_description() -> None:
    assert validate_new({"title": "Alien"}) == {"title": "Alien", "description": ""}


def test_title_of_255_characters_is_accepted_and_256_refused() -> None:
    assert validate_new({"title": "é" * 255})["title"] == "é" * 255
    with pytest.raises(ApiError) as refused:
        validate_new({"title": "é" * 256})
    assert refused.value.status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"title": ""},
        {"title": 5},
        {"title": None},
        {"title": "x", "description": 3},
        {"title": "x", "year": 1999},
        {"title": "nul\x00byte"},
    ],
)
def test_invalid_new_movies_are_400(body: dict[str, object]) -> None:
    with pytest.raises(ApiError) as refused:
        validate_new(body)
    assert refused.value.status_code == 400


def test_changes_need_at_least_one_known_field() -> None:
    assert validate_changes({"description": ""}) == {"description": ""}
    for body in ({}, {"rating": 5}):
        with pytest.raises(ApiError):
            validate_changes(body)


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "1.5", "١٢", "99999999999", ""])
def test_ids_that_cannot_exist_are_404(raw: str) -> None:
    with pytest.raises(ApiError) as refused:
        parse_id(raw)
    assert refused.value.status_code == 404


def test_like_metacharacters_are_escaped() -> None:
    assert escape_like(r"100%_a\b") == r"100\%\_a\\b"
