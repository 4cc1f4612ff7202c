"""Broker settings shared by the publisher (gateway) and the consumer (billing-app).

The topology (exchange, quorum queue, dead-letter queue) is defined once by the broker's own
configuration; apps only verify it with passive declarations.
"""

from __future__ import annotations

from dataclasses import dataclass

import pika

from common.config import Env

# While nothing listens on the broker's port (its container is starting, or restarting), a connection is
# refused at once and costs the broker nothing: the apps try again after this many seconds instead of
# backing off, so that they are connected about a second after the broker opens its port. Any other failure
# (a broker that answers but refuses the login, times out...) still backs off (common/backoff.py).
REFUSED_RETRY_SECONDS = 1.0


def connection_refused(error: BaseException) -> bool:
    """Whether pika's connection error comes from a refused TCP connection (nothing listening), however
    pika wraps it (AMQPConnectionError, its connection workflow's errors, their causes)."""
    pending: list[object] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return True
        pending.extend(current.args)
        pending.extend(getattr(current, "exceptions", None) or ())
        pending.extend((getattr(current, "exception", None), current.__cause__, current.__context__))
    return False


@dataclass(frozen=True)
class BrokerSettings:
    host: str
    port: int
    user: str
    password: str
    queue: str
    exchange: str
    heartbeat: int
    connect_timeout: float

    @classmethod
    def from_env(cls, env: Env, role: str) -> BrokerSettings:
        """``role`` is GATEWAY or BILLING: which broker user's credentials to read."""
        return cls(
            host=env.str("RABBITMQ_HOST", "rabbit-queue"),
            port=env.int("RABBITMQ_PORT", 5672, 1, 65535),
            user=env.str(f"RABBITMQ_{role}_USER"),
            password=env.str(f"RABBITMQ_{role}_PASSWORD"),
            queue=env.str("RABBITMQ_QUEUE", "billing_queue"),
            exchange=env.str("RABBITMQ_EXCHANGE", "billing"),
            heartbeat=env.int("RABBITMQ_HEARTBEAT", 30, 0, 600),
            connect_timeout=env.float("RABBITMQ_CONNECT_TIMEOUT", 3.0, 0.1),
        )

    def parameters(self, name: str) -> pika.ConnectionParameters:
        return pika.ConnectionParameters(
            host=self.host,
            port=self.port,
            credentials=pika.PlainCredentials(self.user, self.password, erase_on_connect=False),
            heartbeat=self.heartbeat,
            socket_timeout=self.connect_timeout,
            stack_timeout=self.connect_timeout * 2,
            blocked_connection_timeout=60,
            connection_attempts=1,
            client_properties={"connection_name": name},
        )
