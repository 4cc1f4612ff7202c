"""The README's usage examples, run as written against the test stack.

Each `curl` line of the Usage section is followed by `# <status> <body>`: the command runs with the
test port instead of 3000, and must answer that status and a body of that shape. Fields that differ
from one stack to another (ids, message ids, request ids, times, counts) are compared by name only;
a list must contain the documented elements. `/api/movies/1` means "the movie created above".
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest

from stack import PORT, ROOT, Stack

pytestmark = pytest.mark.e2e
VOLATILE = {"id", "message_id", "request_id", "created_at", "deleted"}


def examples() -> list[tuple[str, int, str]]:
    usage = (ROOT / "README.md").read_text().split("## Usage", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", usage, re.S).group(1).splitlines()
    pairs = []
    for command, expected in zip(block[::2], block[1::2], strict=True):
        status, _, body = expected.removeprefix("# ").partition(" ")
        assert command.startswith("curl "), command
        pairs.append((command, int(status), body))
    return pairs


def masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("*" if k in VOLATILE else masked(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def shape_matches(expected: str, actual: bytes) -> bool:
    try:
        want = masked(json.loads(expected))
    except ValueError:  # abridged in the README ("..."): the documented beginning must match
        return actual.decode().startswith(expected.split("...")[0])
    got = masked(json.loads(actual))
    if isinstance(want, list):
        return isinstance(got, list) and all(item in got for item in want)
    return want == got


def test_readme_usage_examples_answer_as_documented(stack: Stack) -> None:
    created_id = None
    for command, status, body in examples():
        line = command.replace("localhost:3000", f"127.0.0.1:{PORT}")
        if created_id is not None:
            line = line.replace("/api/movies/1", f"/api/movies/{created_id}")
        result = subprocess.run(["bash", "-c", line + " -w '\\n%{http_code}'"], capture_output=True, timeout=30)
        answer, _, code = result.stdout.rpartition(b"\n")
        assert int(code) == status, f"{command}\n-> {code.decode()} {answer[:300]!r}"
        assert shape_matches(body, answer), f"{command}\n-> {answer[:300]!r}\nexpected {body}"
        if created_id is None and '"id"' in body:
            created_id = json.loads(answer)["id"]
