"""Entry point: ``python -m api_gateway_app``: settings from the environment, then serve."""

from __future__ import annotations

from api_gateway_app.proxy import Upstream
from api_gateway_app.publisher import Publisher
from api_gateway_app.routes import build_app
from common import app_main, logs
from common.amqp import BrokerSettings
from common.config import ConfigError, Env


def main() -> None:
    env = Env()
    http = app_main.HttpSettings.from_env(env, default_port=3000)
    broker = BrokerSettings.from_env(env, "GATEWAY")
    connect_timeout = env.float("UPSTREAM_CONNECT_TIMEOUT", 2.0, 0.1)
    read_timeout = env.float("UPSTREAM_READ_TIMEOUT", 10.0, 0.1)
    inventory_url = env.str("INVENTORY_APP_URL", "http://inventory-app:8080")
    billing_url = env.str("BILLING_APP_URL", "http://billing-app:8080")
    # Each upstream may hold all the worker threads but two, left for orders, /health and the other upstream.
    max_in_flight = env.int("UPSTREAM_MAX_IN_FLIGHT", max(1, http.threads - 2), 1, 256)
    confirm_timeout = env.float("PUBLISH_CONFIRM_TIMEOUT", 5.0, 0.1)
    log_dir = env.str("LOG_DIR", "/var/log/api-gateway")
    log_max_bytes = env.int("LOG_MAX_BYTES", 10 * 1024 * 1024, 1024)
    log_backups = env.int("LOG_BACKUPS", 5, 1, 100)
    log_level = env.str("LOG_LEVEL", "INFO")
    env.check()
    try:
        inventory = Upstream("inventory-app", inventory_url, connect_timeout, read_timeout, max_in_flight)
        billing = Upstream("billing-app", billing_url, connect_timeout, read_timeout, max_in_flight)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    logs.setup(log_level, log_dir, log_max_bytes, log_backups, http.worker)

    publisher = Publisher(broker, confirm_timeout)
    publisher.start()
    app = build_app(inventory, billing, publisher, http.max_body_bytes)
    try:
        app_main.serve_http(app, http)
    finally:
        publisher.stop()


if __name__ == "__main__":
    app_main.run(main)
