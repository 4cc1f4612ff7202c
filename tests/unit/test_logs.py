"""The shared logging set-up: size-rotated files, the standard timestamp, the access log written in
batches (complete lines, in order, none left behind at exit), and waitress's queue warning cut down to one
line per interval."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import logs


@pytest.fixture
def log_dir(tmp_path: Path) -> Iterator[Path]:
    logs.setup("INFO", str(tmp_path), max_bytes=2000, backups=2)
    yield tmp_path
    logs.access.to_file(None)
    for name in ("", "waitress.queue"):
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            handler.close()
        logger.handlers.clear()
        logger.filters.clear()


def test_access_log_lines_carry_the_standard_timestamp(log_dir: Path) -> None:
    logs.access.write("rid 10.0.0.1 GET /api/movies 200 2 1.0ms")
    logs.access.flush()
    line = (log_dir / "access.log").read_text().splitlines()[-1]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} rid 10\.0\.0\.1 GET /api/movies 200 2 1\.0ms", line)
    stamp = line[:19]
    assert abs(time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) - time.time()) < 5


def test_files_rotate_at_the_size_limit_and_keep_the_backups(log_dir: Path) -> None:
    for n in range(200):
        logs.access.write(f"line {n:03d} {'x' * 40}")
    logs.access.flush()
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


def test_access_lines_from_many_threads_arrive_complete_and_in_order_without_a_flush(
    log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup("INFO", str(log_dir), max_bytes=10**7, backups=1)

    def requests(thread: int) -> None:
        for n in range(250):
            logs.access.write(f"t{thread} {n:03d} GET /api/movies 200 2 1.0ms")

    workers = [threading.Thread(target=requests, args=(t,)) for t in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    started = time.monotonic()
    lines: list[str] = []
    while len(lines) < 2000 and time.monotonic() - started < 5:  # the writer thread's next batch
        time.sleep(0.02)
        lines = (log_dir / "access.log").read_text().splitlines()
    assert len(lines) == 2000
    assert all(re.fullmatch(r"\S+ \S+,\d{3} t\d \d{3} GET /api/movies 200 2 1\.0ms", line) for line in lines)
    for thread in range(8):
        mine = [line.split()[3] for line in lines if f" t{thread} " in line]
        assert mine == [f"{n:03d}" for n in range(250)]
    stderr = [line for line in capsys.readouterr().err.splitlines() if " INFO access t" in line]
    assert len(stderr) == 2000


def test_access_lines_still_pending_are_written_when_the_process_exits(tmp_path: Path) -> None:
    program = (
        "from common import logs\n"
        f"logs.setup('INFO', {str(tmp_path)!r}, 10**6, 1)\n"
        "logs.access.write('rid-last 10.0.0.1 GET /health 200 2 0.1ms')\n"
    )
    apps = Path(logs.__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", program], cwd=apps, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "INFO access rid-last 10.0.0.1 GET /health 200 2 0.1ms" in result.stderr
    assert (tmp_path / "access.log").read_text().endswith(" rid-last 10.0.0.1 GET /health 200 2 0.1ms\n")
