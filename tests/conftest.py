"""Fixtures: the test stack is built and started once per run, and removed (with its volumes) at the end.

Set PWC_KEEP_STACK=1 to leave it running for inspection (`docker compose -p pwc-test ps`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from stack import PROJECT, Stack, make_env_file


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env_file = tmp_path_factory.mktemp("stack") / "test.env"
    test_stack = Stack(env_file, make_env_file(env_file))
    # Leftovers of an interrupted earlier run would break the "fresh volume" assumptions.
    test_stack.compose("down", "--volumes", "--remove-orphans", check=False)
    started = time.monotonic()
    result = test_stack.compose("up", "--build", "--detach", "--wait", "--wait-timeout", "300", check=False)
    if result.returncode != 0:
        logs = test_stack.compose("logs", "--no-color", "--tail", "80", check=False).stdout
        test_stack.compose("down", "--volumes", "--remove-orphans", check=False)
        pytest.fail(f"the test stack did not start:\n{result.stderr}\n{logs}")
    print(f"\ntest stack {PROJECT} built and healthy in {time.monotonic() - started:.0f}s")
    yield test_stack
    if os.environ.get("PWC_KEEP_STACK") != "1":
        test_stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)
