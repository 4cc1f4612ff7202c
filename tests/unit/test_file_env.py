"""A secret given as a file (<NAME>_FILE) has the same value for the shell bootstraps (scripts/image/file-env.sh)
and for the Python apps (common.config.Env): trailing CR and LF characters are dropped, nothing else."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from common.config import Env
from stack import ROOT

# File content -> the secret it holds. Editors on Windows, `echo`, and heredocs add line endings.
CASES = {
    "crlf": (b"pw\r\n", "pw"),
    "two newlines": (b"pw\n\n", "pw"),
    "cr cr lf": (b"pw\r\r\n", "pw"),
    "inner and trailing spaces kept": (b"p w \n", "p w "),
    "no line ending": (b"pw", "pw"),
    "inner cr kept": (b"pw\rx\n", "pw\rx"),
    "trailing cr only": (b"pw\r", "pw"),
}


def from_shell(secret_file: Path) -> str:
    """The value a bootstrap script gets from `file_env SECRET` with SECRET_FILE set."""
    script = 'source "$1"; file_env SECRET; printf "%s" "$SECRET"'
    result = subprocess.run(
        ["bash", "-c", script, "bash", str(ROOT / "scripts" / "image" / "file-env.sh")],
        env={"PATH": os.environ["PATH"], "SECRET_FILE": str(secret_file)},
        capture_output=True,
        timeout=10,
        check=True,
    )
    return result.stdout.decode()


def from_python(secret_file: Path) -> str:
    env = Env({"SECRET_FILE": str(secret_file)})
    value = env.str("SECRET")
    env.check()
    return value


@pytest.mark.parametrize(("content", "secret"), CASES.values(), ids=CASES.keys())
def test_shell_and_python_read_the_same_secret_from_a_file(tmp_path: Path, content: bytes, secret: str) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(content)
    assert (from_shell(secret_file), from_python(secret_file)) == (secret, secret)
