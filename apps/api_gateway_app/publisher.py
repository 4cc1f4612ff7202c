"""Publishing billing orders to RabbitMQ with publisher confirms.

One long-lived connection, owned by one I/O thread (pika's SelectConnection, which handles
heartbeats). Web threads hand a message over with ``add_callback_threadsafe`` and wait for the
broker's confirm, so many confirms are in flight at once. Every publish ends, within a bounded time, in
one of three outcomes, and each means exactly what it says:

- confirmed: the broker persisted and routed the message (the order will be stored);
- :class:`PublishFailed`: the message never reached the broker, or the broker refused it or could not
  route it: it will never be stored. Nothing is published while the broker blocks the connection
  (a memory or disk alarm), so that case is a :class:`PublishFailed` at once;
- :class:`PublishUnconfirmed`: the message was handed to the broker but no confirm came (timeout,
  connection lost): it may or may not be stored.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import pika
import pika.channel
import pika.frame
from pika.spec import Basic

from common import metrics
from common.amqp import REFUSED_RETRY_SECONDS, BrokerSettings, connection_refused
from common.backoff import Backoff
from common.orders import Message

log = logging.getLogger(__name__)
OUTCOMES = ("confirmed", "nacked", "returned", "unconfirmed", "blocked", "unavailable")
published = metrics.REGISTRY.counter(
    "gateway_publish",
    "Orders handed to the broker, by outcome: confirmed (200), unconfirmed (202: sent, no confirm in time), "
    "nacked, returned (unroutable), blocked (resource alarm) and unavailable (not sent) - all but the "
    "first two answered 503.",
    ("outcome",),
    initial=[(outcome,) for outcome in OUTCOMES],
)
publish_duration = metrics.REGISTRY.histogram(
    "gateway_publish_duration_seconds", "From an order's publish to the broker's confirm (confirmed orders)."
)
broker_connected = metrics.REGISTRY.gauge(
    "gateway_broker_connected", "1 while the gateway has a confirming channel to the broker."
)
broker_blocked = metrics.REGISTRY.gauge(
    "gateway_broker_blocked", "1 while the broker blocks publishing (resource alarm): orders are refused."
)


class PublishFailed(Exception):
    """The message was not queued and never will be. ``outcome`` names why, for the metrics."""

    def __init__(self, message: str, outcome: str = "unavailable") -> None:
        super().__init__(message)
        self.outcome = outcome


class BrokerBlocked(PublishFailed):
    """The broker blocks publishing (resource alarm): nothing was sent."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "blocked")


class PublishUnconfirmed(Exception):
    """The message was sent but not confirmed: whether it is queued is unknown."""


def pika_properties(message: Message) -> pika.BasicProperties:
    """The message's properties as pika sends them, naming the gateway as the publishing app."""
    return pika.BasicProperties(
        content_type=message.content_type,
        delivery_mode=message.delivery_mode,
        message_id=message.message_id,
        timestamp=message.timestamp,
        headers=dict(message.headers),
        app_id="api-gateway-app",
    )


class Publisher:
    def __init__(self, settings: BrokerSettings, confirm_timeout: float) -> None:
        self._settings = settings
        self._confirm_timeout = confirm_timeout
        self._connection: pika.SelectConnection | None = None
        self._channel: pika.channel.Channel | None = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        # Set by the I/O thread between Connection.Blocked and Connection.Unblocked; read by web threads.
        self._blocked = False
        # Touched only by the I/O thread:
        self._pending: dict[int, tuple[str, Future[None]]] = {}
        self._returned: set[str] = set()
        self._last_tag = 0
        self._refused = False  # the last connection attempt was refused (nothing listening)
        self._thread = threading.Thread(target=self._run, name="amqp-publisher", daemon=True)

    # --- called from web threads ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def state(self) -> str:
        """``ok``, ``blocked`` (resource alarm) or ``down``."""
        if not self._ready.is_set():
            return "down"
        return "blocked" if self._blocked else "ok"

    def publish(self, message: Message) -> None:
        """Publish one message; return once the broker confirmed it.
        Raises PublishFailed (not queued) or PublishUnconfirmed (outcome unknown)."""
        started = time.monotonic()
        try:
            self._publish(message)
        except PublishFailed as exc:
            published.inc(exc.outcome)
            raise
        except PublishUnconfirmed:
            published.inc("unconfirmed")
            raise
        published.inc("confirmed")
        publish_duration.observe(time.monotonic() - started)

    def _publish(self, message: Message) -> None:
        connection = self._connection
        if connection is None or not self._ready.is_set():
            raise PublishFailed("broker unavailable")
        if self._blocked:
            raise BrokerBlocked("the broker blocks publishing (resource alarm)")
        future: Future[None] = Future()
        try:
            connection.ioloop.add_callback_threadsafe(functools.partial(self._publish_on_loop, message, future))
        except Exception as exc:  # noqa: BLE001 - the I/O loop is closing
            raise PublishFailed(f"broker unavailable ({exc})") from None
        try:
            future.result(timeout=self._confirm_timeout)
        except FutureTimeout:
            # Cancelling succeeds only if the I/O thread has not started publishing it: then it never will.
            if future.cancel():
                raise PublishFailed("the broker connection did not take the message in time") from None
            raise PublishUnconfirmed("the broker did not confirm the message in time") from None

    def stop(self) -> None:
        self._stopping.set()
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(Exception):  # already closed
                connection.ioloop.add_callback_threadsafe(self._close_connection)
        self._thread.join(timeout=10)

    # --- the I/O thread ------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(0.5, 5.0)
        refused_before = False
        while not self._stopping.is_set():
            self._refused = False
            connection = pika.SelectConnection(
                self._settings.parameters("api-gateway-app publisher"),
                on_open_callback=self._on_connection_open,
                on_open_error_callback=self._on_connection_open_error,
                on_close_callback=self._on_connection_closed,
            )
            self._connection = connection
            started = time.monotonic()
            connection.ioloop.start()  # returns when the connection is gone
            self._ready.clear()
            self._blocked = False
            broker_connected.set(0)
            broker_blocked.set(0)
            self._channel = None
            self._unconfirm_pending("connection to the broker lost")
            # Release its poller and wake-up sockets now rather than at garbage collection (one set per attempt
            # while the broker is down). A publish() racing with this finds the loop closed and times out (503).
            connection.ioloop.close()
            if self._stopping.is_set():
                break
            if self._refused:
                # Said once, not every second, while the broker's port stays closed.
                if not refused_before:
                    log.warning(
                        "the broker refuses connections (starting?); retrying every %.0fs", REFUSED_RETRY_SECONDS
                    )
                refused_before = True
                self._stopping.wait(REFUSED_RETRY_SECONDS)
                continue
            refused_before = False
            delay = backoff.after_connection(started)
            log.warning("broker connection down; reconnecting in %.1fs", delay)
            self._stopping.wait(delay)

    def _close_connection(self) -> None:
        if self._connection is not None and self._connection.is_open:
            self._connection.close()

    def _on_connection_open(self, connection: pika.SelectConnection) -> None:
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_blocked(self, _connection: pika.SelectConnection, frame: pika.frame.Method) -> None:
        self._blocked = True
        broker_blocked.set(1)
        log.warning("the broker blocks publishing (%s): orders are refused until it unblocks", frame.method.reason)

    def _on_unblocked(self, _connection: pika.SelectConnection, _frame: pika.frame.Method) -> None:
        self._blocked = False
        broker_blocked.set(0)
        log.info("the broker accepts publishing again")

    def _on_connection_open_error(self, connection: pika.SelectConnection, error: BaseException) -> None:
        self._refused = connection_refused(error)
        if not self._refused:
            log.warning("cannot connect to the broker: %r", error)
        connection.ioloop.stop()

    def _on_connection_closed(self, connection: pika.SelectConnection, reason: BaseException) -> None:
        if not self._stopping.is_set():
            log.warning("broker connection closed: %r", reason)
        connection.ioloop.stop()

    def _on_channel_open(self, channel: pika.channel.Channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        # Verify the topology the broker defined; never declare our own copy.
        channel.exchange_declare(self._settings.exchange, passive=True, callback=self._on_exchange_ok)

    def _on_exchange_ok(self, _frame: pika.frame.Method) -> None:
        if self._channel is not None:
            self._channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_confirm_mode)

    def _on_confirm_mode(self, _frame: pika.frame.Method) -> None:
        self._last_tag = 0
        self._ready.set()
        broker_connected.set(1)
        log.info("publishing to exchange %r with confirms", self._settings.exchange)

    def _on_channel_closed(self, _channel: pika.channel.Channel, reason: BaseException) -> None:
        self._ready.clear()
        broker_connected.set(0)
        log.error("broker channel closed: %r", reason)
        self._unconfirm_pending("broker channel closed")
        self._close_connection()

    def _publish_on_loop(self, message: Message, future: Future[None]) -> None:
        if not future.set_running_or_notify_cancel():
            return  # the web thread gave up waiting and answered "not queued"
        channel = self._channel
        if channel is None or not channel.is_open or not self._ready.is_set():
            future.set_exception(PublishFailed("broker unavailable"))
            return
        if self._blocked:
            future.set_exception(BrokerBlocked("the broker blocks publishing (resource alarm)"))
            return
        self._last_tag += 1
        self._pending[self._last_tag] = (message.message_id or "", future)
        channel.basic_publish(
            self._settings.exchange,
            self._settings.queue,
            message.body,
            properties=pika_properties(message),
            mandatory=True,
        )

    def _on_return(
        self, _channel: pika.channel.Channel, _method: Basic.Return, properties: pika.BasicProperties, _body: bytes
    ) -> None:
        # An unroutable message comes back before its ack: remember it so the ack becomes a failure.
        self._returned.add(properties.message_id)

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        tag = method.delivery_tag
        tags = sorted(t for t in self._pending if t <= tag) if method.multiple else [tag]
        for confirmed in tags:
            entry = self._pending.pop(confirmed, None)
            if entry is None:
                continue
            message_id, future = entry
            if isinstance(method, Basic.Nack):
                future.set_exception(PublishFailed("the broker refused the message", "nacked"))
            elif message_id in self._returned:
                self._returned.discard(message_id)
                future.set_exception(PublishFailed("the message could not be routed to the billing queue", "returned"))
            else:
                future.set_result(None)

    def _unconfirm_pending(self, reason: str) -> None:
        """The connection or channel is gone: what was sent and not confirmed has an unknown fate."""
        pending, self._pending = self._pending, {}
        self._returned.clear()
        for _message_id, future in pending.values():
            if not future.done():
                future.set_exception(PublishUnconfirmed(reason))
