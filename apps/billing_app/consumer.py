"""The billing consumer: billing_queue -> orders table.

- A message is acknowledged only after the transaction that stored it committed.
- Messages are stored in batches (up to ``batch_size``, or whatever arrived within ``batch_wait``)
  with one INSERT ... ON CONFLICT (message_id) DO NOTHING, then acknowledged together.
- One batch is written by a writer thread while the next one is being received (the broker's
  channel is only ever used from the consumer's thread); a failed write is retried in the
  consumer's thread as below, before anything newer is stored.
- Only a message's own faults are dead-lettered (rejected without requeue: the broker moves it to
  billing_queue.dlq): a message that cannot be read as a valid order, or an order whose row the
  database refuses for its data (SQLSTATE classes 22 and 23), found by storing its batch one by one.
- Any other database failure (unreachable, login refused, permissions, missing table, read-only,
  timeouts, disk full...) is a store outage: nothing is acknowledged or dead-lettered, the write is
  retried with backoff (heartbeats go on), and /health reports why until a write succeeds again.
- Broker down: reconnect with backoff; unacknowledged messages are redelivered and deduplicated.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pika
import pika.adapters.blocking_connection
import pika.exceptions
from pg8000.exceptions import DatabaseError

from billing_app.store import insert_orders
from common import metrics
from common.amqp import REFUSED_RETRY_SECONDS, BrokerSettings, connection_refused
from common.backoff import Backoff
from common.db import DatabaseUnavailable, Pool, describe, is_data_error
from common.orders import InvalidOrder, Message, Order, read_order

log = logging.getLogger(__name__)
# Where the consumer reports its state to the HTTP API's /health (/tmp is a tmpfs private to the container).
STATUS_FILE = "/tmp/billing-consumer.json"  # noqa: S108
Channel = pika.adapters.blocking_connection.BlockingChannel
# Each batch costs a commit (a WAL flush) and an ack; 500 drained a backlog ~1.6 times as fast as 100.
DEFAULT_BATCH_SIZE = 500
# What a failed write may raise when the database, not the program, is at fault.
_STORE_ERRORS = (DatabaseUnavailable, DatabaseError)
# The consumer is its own process: its metrics have their own listener, beside the HTTP API's.
METRICS_PORT = 9101

received = metrics.REGISTRY.counter("billing_messages_received", "Messages delivered by the broker.")
orders_stored = metrics.REGISTRY.counter("billing_orders_stored", "Orders stored (new rows), acknowledged.")
duplicates = metrics.REGISTRY.counter(
    "billing_duplicates_skipped",
    "Deliveries of an order already stored (redelivered or published twice), acknowledged.",
)
dead_lettered = metrics.REGISTRY.counter(
    "billing_dead_lettered",
    "Messages rejected to the dead-letter queue, by reason: invalid_message (not a valid order), "
    "refused_by_database (the row's data refused, SQLSTATE class 22 or 23).",
    ("reason",),
    initial=[("invalid_message",), ("refused_by_database",)],
)
batch_sizes = metrics.REGISTRY.histogram(
    "billing_batch_size", "Orders per INSERT.", buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
)
store_duration = metrics.REGISTRY.histogram(
    "billing_store_duration_seconds", "Time to store one batch (one transaction)."
)
consumer_connected = metrics.REGISTRY.gauge("billing_consumer_connected", "1 while consuming from the billing queue.")
store_outage = metrics.REGISTRY.gauge(
    "billing_store_outage", "1 while the database refuses to store orders (they are held unacknowledged)."
)


@dataclass(frozen=True)
class ConsumerSettings:
    prefetch: int
    batch_size: int
    batch_wait: float
    status_file: str


def _insert(pool: Pool, orders: list[Order]) -> int:
    started = time.monotonic()
    new = insert_orders(pool, orders)
    store_duration.observe(time.monotonic() - started)
    batch_sizes.observe(len(orders))
    return new


@dataclass
class _Delivery:
    tag: int
    order: Order


def received_message(properties: pika.BasicProperties, body: bytes) -> Message:
    """A delivery as the plain values common.orders reads."""
    return Message(
        body,
        properties.message_id,
        properties.headers or {},
        properties.timestamp,
        properties.content_type,
        properties.delivery_mode,
    )


class Consumer:
    def __init__(self, broker: BrokerSettings, pool: Pool, settings: ConsumerSettings) -> None:
        self.broker = broker
        self.pool = pool
        self.settings = settings
        self.stopping = threading.Event()
        self._batch: list[_Delivery] = []
        self._first_at = 0.0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self._writing: tuple[Future[int], list[_Delivery]] | None = None
        self._status_written = 0.0
        self._connected = False
        self._store_error: str | None = None  # why the last write failed, until one succeeds
        self._store_failing_since = 0.0

    # --- lifecycle ----------------------------------------------------------------------------

    def run(self) -> None:
        backoff = Backoff(0.5, 10.0)
        refused_before = False
        while not self.stopping.is_set():
            started = time.monotonic()
            refused = False
            try:
                self._consume()
            except _Abandon:
                pass
            except pika.exceptions.AMQPError as exc:
                refused = connection_refused(exc)
                if not refused:
                    log.warning("consuming interrupted: %r", exc)
            self._set_connected(False)
            self._batch.clear()  # unacknowledged: the broker redelivers them (a write may still commit:
            # the redelivered copies are then found already stored)
            if self.stopping.is_set():
                break
            if refused:
                # Said once, not every second, while the broker's port stays closed.
                if not refused_before:
                    log.warning(
                        "the broker refuses connections (starting?); retrying every %.0fs", REFUSED_RETRY_SECONDS
                    )
                refused_before = True
                self.stopping.wait(REFUSED_RETRY_SECONDS)
                continue
            refused_before = False
            delay = backoff.after_connection(started)
            log.info("reconnecting to the broker in %.1fs", delay)
            self.stopping.wait(delay)
        self._writer.shutdown()
        log.info("consumer stopped")

    def stop(self, signum: int = signal.SIGTERM, _frame: Any = None) -> None:
        log.info("received %s: finishing the current batch", signal.Signals(signum).name)
        self.stopping.set()

    def _consume(self) -> None:
        connection = pika.BlockingConnection(self.broker.parameters("billing-app consumer"))
        try:
            channel = connection.channel()
            # The queue is defined by the broker's configuration; only check that it is there.
            declared = channel.queue_declare(self.broker.queue, passive=True)
            channel.basic_qos(prefetch_count=self.settings.prefetch)
            tag = channel.basic_consume(self.broker.queue, self._on_message)
            log.info("consuming %r (%d messages waiting)", self.broker.queue, declared.method.message_count)
            self._set_connected(True)
            while not self.stopping.is_set():
                connection.process_data_events(time_limit=self._time_to_flush())
                time.sleep(0)  # let the writer thread have the GIL
                self._settle_written(connection, channel)
                if (
                    self._writing is None
                    and self._batch
                    and (
                        len(self._batch) >= self.settings.batch_size
                        or time.monotonic() - self._first_at >= self.settings.batch_wait
                    )
                ):
                    self._start_writing(connection)
                self._write_status()
            # Stopping: the batches in hand are finished, the rest goes back to the queue.
            self._settle_written(connection, channel, wait=True)
            self._store_and_ack(connection, channel)
            channel.basic_cancel(tag)
        finally:
            if self._writing is not None:  # the connection is lost: wait for the write, acknowledge nothing
                self._writing[0].exception()
                self._writing = None
            if connection.is_open:
                connection.close()

    def _start_writing(self, connection: pika.BlockingConnection) -> None:
        size = self.settings.batch_size
        batch, self._batch = self._batch[:size], self._batch[size:]
        if self._batch:
            self._first_at = time.monotonic()
        future = self._writer.submit(_insert, self.pool, [d.order for d in batch])

        def wake_up(_: Future[int]) -> None:  # process_data_events returns as soon as the write is done
            with contextlib.suppress(Exception):  # the connection may be gone by now: nothing to wake
                connection.add_callback_threadsafe(lambda: None)

        future.add_done_callback(wake_up)
        self._writing = (future, batch)

    def _settle_written(self, connection: pika.BlockingConnection, channel: Channel, wait: bool = False) -> None:
        """Acknowledge the batch written by the writer thread, once it is done. A failed write goes
        back in front of the batch being received, and is stored here, with retries."""
        if self._writing is None or not (wait or self._writing[0].done()):
            return
        future, batch = self._writing
        self._writing = None
        error = future.exception()
        if error is None:
            self._acknowledge(channel, batch, future.result())
            return
        if not isinstance(error, _STORE_ERRORS):
            raise error  # a bug: let the supervisor restart the consumer
        self._batch = batch + self._batch
        self._store_and_ack(connection, channel)

    def _time_to_flush(self) -> float:
        if not self._batch or self._writing is not None:
            return 0.5  # woken up earlier by a delivery or by the end of the write
        return max(0.0, self.settings.batch_wait - (time.monotonic() - self._first_at))

    # --- messages -----------------------------------------------------------------------------

    def _on_message(self, channel: Channel, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        received.inc()
        try:
            order = read_order(received_message(properties, body))
        except InvalidOrder as exc:
            self._dead_letter(channel, method.delivery_tag, properties.message_id, "invalid_message", str(exc))
            return
        if not self._batch:
            self._first_at = time.monotonic()
        self._batch.append(_Delivery(method.delivery_tag, order))

    @staticmethod
    def _dead_letter(channel: Channel, tag: int, message_id: str | None, kind: str, reason: str) -> None:
        log.error("rejecting message %s to the dead-letter queue: %s", message_id, reason)
        channel.basic_reject(tag, requeue=False)
        dead_lettered.inc(kind)

    def _acknowledge(self, channel: Channel, stored: list[_Delivery], new: int) -> None:
        """Acknowledge ``stored``, committed: every unsettled delivery up to its last tag is in it
        (newer deliveries have higher tags; the refused ones were rejected)."""
        if stored:
            channel.basic_ack(stored[-1].tag, multiple=True)
        orders_stored.inc(amount=new)
        duplicates.inc(amount=len(stored) - new)
        self._report_store_ok()
        log.info("stored %d orders (%d already stored), acknowledged %d", new, len(stored) - new, len(stored))

    def _store_and_ack(self, connection: pika.BlockingConnection, channel: Channel) -> None:
        """Store and acknowledge every delivery in hand, here in the consumer's thread. During a
        store outage nothing is acknowledged: the write is retried with backoff, with the deliveries
        that arrive meanwhile, until it succeeds (or the consumer stops: the broker keeps them)."""
        backoff = Backoff(0.5, 5.0)
        while self._batch:
            batch = list(self._batch)
            try:
                new, stored = self._store(channel, batch)
            except _STORE_ERRORS as exc:
                if self.stopping.is_set():
                    log.warning(
                        "stopping with %d orders not stored (%s); the broker keeps them",
                        len(self._batch),
                        describe(exc),
                    )
                    raise _Abandon() from None
                delay = backoff.next()
                self._report_outage(exc, delay)
                connection.sleep(delay)  # keeps heartbeats going; deliveries keep arriving
                continue
            self._acknowledge(channel, stored, new)
            done = {d.tag for d in stored}
            self._batch = [d for d in self._batch if d.tag not in done]

    def _store(self, channel: Channel, batch: list[_Delivery]) -> tuple[int, list[_Delivery]]:
        """Store ``batch``: the number of new rows, and the deliveries stored. If the database refuses
        the batch for its data, its orders are stored one by one and the refused ones dead-lettered
        (and dropped from the batch in hand). A store outage raises, whatever was done before."""
        try:
            return _insert(self.pool, [d.order for d in batch]), batch
        except DatabaseError as exc:
            if not is_data_error(exc):
                raise
            log.error("the database refused a batch (%s); storing its orders one by one", describe(exc))
        new, stored = 0, []
        for delivery in batch:
            try:
                new += _insert(self.pool, [delivery.order])
                stored.append(delivery)
            except DatabaseError as exc:
                if not is_data_error(exc):
                    raise
                reason = f"refused by the database: {describe(exc)}"
                self._dead_letter(channel, delivery.tag, delivery.order.message_id, "refused_by_database", reason)
                self._batch.remove(delivery)
        return new, stored

    # --- health -------------------------------------------------------------------------------

    def _report_outage(self, exc: BaseException, delay: float) -> None:
        if self._store_error is None:
            self._store_failing_since = time.time()
        self._store_error = describe(exc)
        store_outage.set(1)
        log.warning(
            "billing database cannot store orders (%s); %d orders held unacknowledged, retrying in %.1fs",
            self._store_error,
            len(self._batch),
            delay,
        )
        self._write_status(force=True)

    def _report_store_ok(self) -> None:
        if self._store_error is None:
            return
        log.info("billing database stores orders again, after %.0fs", time.time() - self._store_failing_since)
        self._store_error = None
        store_outage.set(0)
        self._write_status(force=True)

    def _set_connected(self, connected: bool) -> None:
        self._connected = connected
        consumer_connected.set(int(connected))
        self._write_status(force=True)

    def _write_status(self, force: bool = False) -> None:
        """billing-app's HTTP API reads this file for /health."""
        now = time.time()
        if not force and now - self._status_written < 2:
            return
        self._status_written = now
        status = {
            "connected": self._connected,
            "store_error": self._store_error,
            "store_failing_since": self._store_failing_since if self._store_error else None,
            "updated": now,
            "pid": os.getpid(),
        }
        tmp = f"{self.settings.status_file}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(status, handle)
        os.replace(tmp, self.settings.status_file)


class _Abandon(pika.exceptions.AMQPError):
    """Leave the consume loop without acknowledging (stopping while the database is down)."""
