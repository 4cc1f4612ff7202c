"""Start-up shared by the apps: logging, settings errors, the HTTP server."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common import logs, metrics, server
from common.config import ConfigError, Env
from common.workers import MAX_WORKERS

DEFAULT_MAX_BODY_BYTES = 64 * 1024
# Every app serves /metrics here, on the backend network only (compose never publishes it).
DEFAULT_METRICS_PORT = 9100
# Where workers other than 0 serve their metrics to worker 0 (the container's private /tmp).
WORKER_SOCKET_DIR = "/tmp"  # noqa: S108 - a directory of this container only


@dataclass(frozen=True)
class HttpSettings:
    port: int
    threads: int
    max_body_bytes: int
    limits: server.Limits
    metrics_port: int  # 0: no metrics listener
    workers: int = 1  # processes serving the port (HTTP_WORKERS, set by common.workers before supervisord starts)
    worker: int = 0  # this process's number among them (supervisor's process_num)

    @classmethod
    def from_env(cls, env: Env, default_port: int = 8080) -> HttpSettings:
        default = server.Limits()
        total = env.int("MAX_CONNECTIONS", default.total, 1, 100_000)
        limits = server.Limits(
            total=total,
            per_client=env.int("MAX_CONNECTIONS_PER_CLIENT", min(default.per_client, total), 1, total),
            request_timeout=env.int("REQUEST_TIMEOUT", default.request_timeout, 1, 3600),
            idle_timeout=env.int("IDLE_TIMEOUT", default.idle_timeout, 1, 3600),
        )
        workers = env.int("HTTP_WORKERS", 1, 1, MAX_WORKERS)
        return cls(
            workers=workers,
            worker=env.int("HTTP_WORKER", 0, 0, workers - 1),
            port=env.int("HTTP_PORT", default_port, 1, 65535),
            threads=env.int("HTTP_THREADS", 8, 1, 256),
            max_body_bytes=env.int("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1024, 16 * 1024 * 1024),
            limits=limits,
            metrics_port=env.int("METRICS_PORT", DEFAULT_METRICS_PORT, 0, 65535),
        )


def serve_http(app: Any, http: HttpSettings, behind_gateway: bool = False) -> None:
    """Serve ``app``. The internal apps (``behind_gateway``) take the client's address from the
    gateway's X-Forwarded-* headers; the gateway itself trusts no such header from clients."""
    forwarded: dict[str, Any] = {}
    if behind_gateway:
        forwarded = {
            "trusted_proxy": "*",  # only the backend network reaches the internal apps
            "trusted_proxy_count": 1,
            "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"},
        }
    if http.metrics_port and http.workers == 1:
        metrics.serve(http.metrics_port)
    elif http.metrics_port and http.worker == 0:
        metrics.serve(http.metrics_port, metrics.WorkerSet(metrics.REGISTRY, http.workers, WORKER_SOCKET_DIR))
    elif http.metrics_port:
        metrics.serve_unix(metrics.worker_socket(WORKER_SOCKET_DIR, http.worker))
    server.serve(
        app,
        port=http.port,
        threads=http.threads,
        # waitress refuses what is far above our limit (JSON too, see server.py); the app answers 413 below it.
        max_request_body_size=max(16 * 1024 * 1024, http.max_body_bytes * 4),
        limits=http.limits,
        reuse_port=http.workers > 1,
        **forwarded,
    )


def run(main: Callable[[], None]) -> None:
    """Run an app's ``main`` with logging set up; a configuration problem is one clear line."""
    logs.setup(os.environ.get("LOG_LEVEL", "INFO"))
    try:
        main()
    except ConfigError as exc:
        logging.getLogger("config").error("error: %s", exc)
        sys.exit(2)
