"""Logging: one line per event on stderr (supervisor passes it to ``docker logs``),
optionally also to size-rotated files, each line carrying the current request id.

The access log (one line per request) does not go through :mod:`logging`: its lines are written in
batches by a thread of their own, at most ``ACCESS_FLUSH_SECONDS`` after their request (see :class:`AccessLog`).
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import logging.handlers
import os
import sys
import threading
import time

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# An access line is written this long after its request at the latest (and lost if the process is killed
# meanwhile): one write per batch instead of one per request, which supervisord then copies to docker logs.
ACCESS_FLUSH_SECONDS = 0.1


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


_second = (-1, "")  # (second, its text), replaced as one object: threads share it


def _timestamp(when: float) -> str:
    """logging's default time format, ``2026-12-02 10:00:00,123``, the date formatted once per second."""
    global _second
    second, stamp = _second
    if second != int(when):
        second = int(when)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        _second = (second, stamp)
    return f"{stamp},{int((when - second) * 1000):03d}"


class _Formatter(logging.Formatter):
    """The standard format, with the date and time formatted once per second instead of per line."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _timestamp(record.created)


class _RotatingFile(logging.handlers.RotatingFileHandler):
    """Rotates before a line would take the file to ``maxBytes``, like the standard handler, whose
    check formats every record a second time and stats the file (several per cent of the gateway's
    CPU under load): here each record is formatted once. Called with the handler's lock held."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_lines([self.format(record) + self.terminator])
        except Exception:  # noqa: BLE001 - logging must never break the request; the stdlib's way
            self.handleError(record)

    def write_lines(self, lines: list[str]) -> None:
        """Append ``lines`` (each ending in a newline), rolling over before one would reach ``maxBytes``."""
        if self.stream is None:
            self.stream = self._open()
        position = self.stream.tell()
        chunk: list[bytes] = []
        for line in lines:
            data = line.encode("utf-8")
            if self.maxBytes > 0 and position > 0 and position + len(data) >= self.maxBytes:
                self.stream.buffer.write(b"".join(chunk))
                chunk.clear()
                self.doRollover()
                position = 0
            chunk.append(data)
            position += len(data)
        self.stream.buffer.write(b"".join(chunk))
        self.stream.flush()


class AccessLog:
    """The access log: one line per request on stderr (``<time> INFO access <line>``) and, once
    :func:`setup` is given a log directory, in the rotated ``access.log`` (``<time> <line>``).

    ``write`` only stamps the line and appends it to a list; a thread started at the first line writes the
    list out ``ACCESS_FLUSH_SECONDS`` later, one write per destination, and sleeps while no request comes.
    Measured on the gateway under load: the logging module's record, handler locks and two writes per
    request took ~19 % of its Python time, and supervisord, woken once per line to copy it to docker logs,
    another ~11 % of the container's CPU. Pending lines are written at exit, or by ``flush``.
    """

    def __init__(self) -> None:
        self._lines: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._pending = threading.Event()
        self._write_lock = threading.Lock()  # one batch at a time, in order
        self._file: _RotatingFile | None = None
        self._thread: threading.Thread | None = None

    def write(self, line: str) -> None:
        entry = (_timestamp(time.time()), line)
        with self._lock:
            self._lines.append(entry)
            if len(self._lines) == 1:
                self._pending.set()
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
                    self._thread.start()

    def to_file(self, file: _RotatingFile | None) -> None:
        """Also write to ``file`` from now on (None: stderr only); the lines before go where they were."""
        self.flush()
        with self._write_lock:
            if self._file is not None:
                self._file.close()
            self._file = file

    def _run(self) -> None:
        while True:
            self._pending.wait()
            time.sleep(ACCESS_FLUSH_SECONDS)
            self.flush()

    def flush(self) -> None:
        with self._write_lock:
            with self._lock:
                lines, self._lines = self._lines, []
                self._pending.clear()
            if not lines:
                return
            try:
                sys.stderr.write("".join(f"{stamp} INFO access {line}\n" for stamp, line in lines))
                sys.stderr.flush()
                if self._file is not None:
                    self._file.write_lines([f"{stamp} {line}\n" for stamp, line in lines])
            except (OSError, ValueError) as exc:  # a full disk or a closed stream never stops the requests
                logging.getLogger(__name__).warning("%d access-log lines not written: %s", len(lines), exc)


access = AccessLog()
atexit.register(access.flush)


class AtMostEvery:
    """Stands in for a logger whose warnings may come once per request: passes one per ``seconds``
    to ``logger`` (the next one says how many were left out). Checked before any record is made,
    so a left-out line costs next to nothing."""

    def __init__(self, logger: logging.Logger, seconds: float) -> None:
        self.logger = logger
        self.seconds = seconds
        self._next = 0.0
        self._skipped = 0
        self._lock = threading.Lock()

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._skipped += 1
                return
            self._next = now + self.seconds
            skipped, self._skipped = self._skipped, 0
        if skipped:
            msg = f"{msg} ({skipped} similar lines left out)"
        self.logger.warning(msg, *args)


def _handler(handler: logging.Handler, fmt: str) -> logging.Handler:
    handler.setFormatter(_Formatter(fmt))
    handler.addFilter(_RequestIdFilter())
    return handler


def setup(
    level: str = "INFO", log_dir: str | None = None, max_bytes: int = 0, backups: int = 0, worker: int = 0
) -> None:
    """Configure the root logger and the access log.

    With ``log_dir``, ``app.log`` and ``access.log`` are written there as well, rotated when
    they reach ``max_bytes`` (``backups`` old files kept); worker process N > 0 of an app writes
    ``app-N.log`` and ``access-N.log`` (each file is rotated by the one process that writes it).
    """
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level)
    root.addHandler(_handler(logging.StreamHandler(sys.stderr), FORMAT))

    def rotating(directory: str, name: str) -> _RotatingFile:
        if worker:
            name = name.replace(".log", f"-{worker}.log")
        path = os.path.join(directory, name)
        return _RotatingFile(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")

    if log_dir:
        root.addHandler(_handler(rotating(log_dir, "app.log"), FORMAT))
    access.to_file(rotating(log_dir, "access.log") if log_dir else None)

    # waitress logs "Serving on ..." and queue warnings (see server.serve) under its own name; keep them.
    # pika logs every failed (re)connection attempt at ERROR, several lines each; the apps log one
    # line per attempt themselves, with the reason.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
