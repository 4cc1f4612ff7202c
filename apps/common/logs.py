"""Logging: one line per event on stderr (supervisor passes it to ``docker logs``),
optionally also to size-rotated files, each line carrying the current request id."""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
import os
import sys

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
ACCESS_FORMAT = "%(asctime)s %(message)s"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def _handler(handler: logging.Handler, fmt: str) -> logging.Handler:
    handler.setFormatter(logging.Formatter(fmt))
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
            return logging.handlers.RotatingFileHandler(
                os.path.join(log_dir, name), maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
            )

        root.addHandler(_handler(rotating("app.log"), FORMAT))
        access.addHandler(_handler(rotating("access.log"), ACCESS_FORMAT))

    # waitress logs "Serving on ..." and queue warnings under its own name; keep them.
    # pika logs every failed (re)connection attempt at ERROR, several lines each; the apps log one
    # line per attempt themselves, with the reason.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
