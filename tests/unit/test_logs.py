"""The shared logging set-up: size-rotated files, the standard timestamp, and waitress's queue warning
cut down to one line per interval."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import logs


@pytest.fixture
def log_dir(tmp_path: Path) -> Iterator[Path]:
    logs.setup("INFO", str(tmp_path), max_bytes=2000, backups=2)
    yield tmp_path
    for name in ("", "access", "waitress.queue"):
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            handler.close()
        logger.handlers.clear()
        logger.filters.clear()


def test_access_log_lines_carry_the_standard_timestamp(log_dir: Path) -> None:
    logging.getLogger("access").info("rid 10.0.0.1 GET /api/movies 200 2 1.0ms")
    line = (log_dir / "access.log").read_text().splitlines()[-1]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} rid 10\.0\.0\.1 GET /api/movies 200 2 1\.0ms", line)
    stamp = line[:19]
    assert abs(time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) - time.time()) < 5


def test_files_rotate_at_the_size_limit_and_keep_the_backups(log_dir: Path) -> None:
    access = logging.getLogger("access")
    for n in range(200):
        access.info("line %03d %s", n, "x" * 40)
    files = sorted(p.name for p in log_dir.glob("access.log*"))
    assert files == ["access.log", "access.log.1", "access.log.2"]
    for name in files:
        assert 0 < (log_dir / name).stat().st_size < 2000
    newest = (log_dir / "access.log").read_text().splitlines()
    assert newest[-1].endswith(f"line 199 {'x' * 40}")


def test_waitress_queue_warnings_are_cut_to_one_per_interval(log_dir: Path) -> None:
    limited = logs.AtMostEvery(logging.getLogger("waitress.queue"), 60.0)
    for depth in range(1, 51):
        limited.warning("Task queue depth is %d", depth)
    lines = [line for line in (log_dir / "app.log").read_text().splitlines() if "Task queue depth" in line]
    assert len(lines) == 1 and lines[0].endswith("WARNING waitress.queue [-] Task queue depth is 1")
    limited._next = 0.0  # the interval has passed
    limited.warning("Task queue depth is %d", 7)
    lines = [line for line in (log_dir / "app.log").read_text().splitlines() if "Task queue depth" in line]
    assert lines[-1].endswith("Task queue depth is 7 (49 similar lines left out)")
