"""The HTTP server of the three apps: waitress, stopped gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import waitress
from waitress.channel import HTTPChannel

from common import logs
from common.web import RequestContext

log = logging.getLogger(__name__)


def serve(app: Callable[..., Any], port: int, threads: int, grace_seconds: float = 10.0, **options: Any) -> None:
    """Serve ``app`` with waitress until SIGTERM/SIGINT, then stop gracefully:
    stop accepting, let in-flight requests finish (up to ``grace_seconds``), exit."""
    server = waitress.create_server(
        RequestContext(app),
        host="0.0.0.0",  # noqa: S104 - inside a container, reached through its networks
        port=port,
        threads=threads,
        ident=None,  # no Server header
        **options,
    )
    # waitress warns "Task queue depth is N" for every request that waits for a free thread: under
    # load, one line per request, which made the overload worse. One line per 10 s keeps the signal.
    server.task_dispatcher.queue_logger = logs.AtMostEvery(logging.getLogger("waitress.queue"), 10.0)
    stopping = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        log.info("received %s, finishing in-flight requests", signal.Signals(signum).name)
        stopping.set()
        server.pull_trigger()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log.info("listening on port %d with %d threads", port, threads)
    while not stopping.is_set():
        waitress.wasyncore.loop(timeout=1.0, map=server._map, count=1)
        # Hand the GIL to the worker threads before scanning the connections again. Without this the
        # I/O thread kept winning it back (each wake-up checks every connection): measured on 2 cores,
        # confirmed POSTs +25-30 % at c16, and most figures about doubled at c64 (bench/README.md).
        time.sleep(0)

    # Stop accepting; close idle keep-alive connections; flush the busy ones.
    server.accepting = False
    server.del_channel()
    server.socket.close()
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        busy = False
        for channel in list(server._map.values()):
            if isinstance(channel, HTTPChannel):
                if channel.requests or channel.total_outbufs_len or channel.request is not None:
                    busy = True
                else:
                    channel.will_close = True
        if not busy:
            break
        waitress.wasyncore.loop(timeout=0.1, map=server._map, count=1)
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=1)
    waitress.wasyncore.close_all(server._map)
    log.info("stopped")
