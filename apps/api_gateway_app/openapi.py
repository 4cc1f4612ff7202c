"""The OpenAPI 3 document of the public API, served at /openapi.json and rendered at /docs.

The document is the file ``openapi.json`` next to this module, written for the default body limit.
Only that limit is configurable (``MAX_BODY_BYTES``), so it is the one value set here; every other
number and pattern in the file mirrors a constant of the code, and tests/lint/test_openapi.py compares
each of them with that constant and every documented route with the gateway's routes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.app_main import DEFAULT_MAX_BODY_BYTES

PATH = Path(__file__).with_name("openapi.json")
_TEXT = PATH.read_text(encoding="utf-8")


def document(max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> dict[str, Any]:
    """The document (a new copy) for a gateway that accepts bodies of up to ``max_body_bytes``."""
    spec: dict[str, Any] = json.loads(_TEXT)
    for operation in operations(spec):
        too_large = operation["responses"].get("413")
        if too_large is not None:
            _set_body_limit(too_large, max_body_bytes)
    return spec


def operations(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every operation of the document (a path item also holds its shared ``parameters``)."""
    return [operation for item in spec["paths"].values() for key, operation in item.items() if key != "parameters"]


def _set_body_limit(response: dict[str, Any], limit: int) -> None:
    """A 413 response of the file, which states the default limit, made to state ``limit``."""
    default, new = str(DEFAULT_MAX_BODY_BYTES), str(limit)
    response["description"] = response["description"].replace(default, new)
    for media in response["content"].values():
        example = media["example"]
        example["error"] = example["error"].replace(default, new)
        example["limit"] = limit
