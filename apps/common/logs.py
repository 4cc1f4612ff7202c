"""Logging: one line per event on stderr (supervisor passes it to ``docker logs``),
optionally also to size-rotated files, each line carrying the current request id."""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
import os
import sys
import threading
import time

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
ACCESS_FORMAT = "%(asctime)s %(message)s"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class _Formatter(logging.Formatter):
    """The standard format, with the date and time formatted once per second instead of per line."""

    _cache = (-1, "")  # (second, its text), replaced as one object: threads share the formatter

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second, stamp = self._cache
        if second != int(record.created):
            second = int(record.created)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._cache = (second, stamp)
        return f"{stamp},{int(record.msecs):03d}"


class _RotatingFile(logging.handlers.RotatingFileHandler):
    """Rotates before a line would take the file to ``maxBytes``, like the standard handler, whose
    check formats every record a second time and stats the file (several per cent of the gateway's
    CPU under load): here each record is formatted once. Called with the handler's lock held."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + self.terminator).encode("utf-8")
            if self.stream is None:
                self.stream = self._open()
            position = self.stream.tell()
            if self.maxBytes > 0 and position > 0 and position + len(line) >= self.maxBytes:
                self.doRollover()
            self.stream.buffer.write(line)
            self.stream.flush()
        except Exception:  # noqa: BLE001 - logging must never break the request; the stdlib's way
            self.handleError(record)


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


def setup(level: str = "INFO", log_dir: str | None = None, max_bytes: int = 0, backups: int = 0) -> None:
    """Configure the root logger and the ``access`` logger.

    With ``log_dir``, ``app.log`` and ``access.log`` are written there as well, rotated when
    they reach ``max_bytes`` (``backups`` old files kept).
    """
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level)
    root.addHandler(_handler(logging.StreamHandler(sys.stderr), FORMAT))

    access = logging.getLogger("access")
    access.handlers.clear()
    access.propagate = False
    access.setLevel(logging.INFO)
    access.addHandler(_handler(logging.StreamHandler(sys.stderr), "%(asctime)s INFO access " + "%(message)s"))

    if log_dir:

        def rotating(name: str) -> logging.handlers.RotatingFileHandler:
            return _RotatingFile(os.path.join(log_dir, name), maxBytes=max_bytes, backupCount=backups, encoding="utf-8")

        root.addHandler(_handler(rotating("app.log"), FORMAT))
        access.addHandler(_handler(rotating("access.log"), ACCESS_FORMAT))

    # waitress logs "Serving on ..." and queue warnings (see server.serve) under its own name; keep them.
    # pika logs every failed (re)connection attempt at ERROR, several lines each; the apps log one
    # line per attempt themselves, with the reason.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
