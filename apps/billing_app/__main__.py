"""Entry points: ``python -m billing_app consumer`` and ``python -m billing_app api``
(two supervisor programs in the billing-app container)."""

from __future__ import annotations

import signal
import sys

from billing_app import api
from billing_app.consumer import DEFAULT_BATCH_SIZE, METRICS_PORT, STATUS_FILE, Consumer, ConsumerSettings
from common import app_main, metrics
from common.amqp import BrokerSettings
from common.config import ConfigError, Env
from common.db import DbSettings, Pool


def consumer() -> None:
    env = Env()
    db = DbSettings.from_env(env)
    broker = BrokerSettings.from_env(env, "BILLING")
    batch_size = env.int("BATCH_SIZE", DEFAULT_BATCH_SIZE, 1, 10_000)
    settings = ConsumerSettings(
        # One batch being written while the next one is received.
        prefetch=env.int("PREFETCH", 2 * batch_size, 1, 65_535),
        batch_size=batch_size,
        batch_wait=env.int("BATCH_WAIT_MS", 50, 0, 10_000) / 1000,
        status_file=env.str("CONSUMER_STATUS_FILE", STATUS_FILE),
    )
    metrics_port = env.int("CONSUMER_METRICS_PORT", METRICS_PORT, 0, 65535)
    env.check()
    if metrics_port:
        metrics.serve(metrics_port)
    pool = Pool(db, size=1, application_name="billing-app consumer")
    worker = Consumer(broker, pool, settings)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    # No wait for the database first: while it cannot be used, the consumer holds what it received
    # (unacknowledged), retries, and reports why in /health.
    worker.run()
    pool.close()


def http_api() -> None:
    env = Env()
    db = DbSettings.from_env(env)
    http = app_main.HttpSettings.from_env(env)
    status_file = env.str("CONSUMER_STATUS_FILE", STATUS_FILE)
    env.check()
    pool = Pool(db, size=http.threads, application_name="billing-app api")
    app_main.serve_http(api.build_app(pool, status_file), http, behind_gateway=True)
    pool.close()


def main() -> None:
    programs = {"consumer": consumer, "api": http_api}
    if len(sys.argv) != 2 or sys.argv[1] not in programs:
        raise ConfigError("usage: python -m billing_app consumer|api")
    programs[sys.argv[1]]()


if __name__ == "__main__":
    app_main.run(main)
