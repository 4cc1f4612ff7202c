"""The billing consumer: billing_queue -> orders table.

- A message is acknowledged only after the transaction that stored it committed.
- Messages are stored in batches (up to ``batch_size``, or whatever arrived within ``batch_wait``)
  with one INSERT ... ON CONFLICT (message_id) DO NOTHING, then acknowledged together.
- One batch is written by a writer thread while the next one is being received (the broker's
  channel is only ever used from the consumer's thread); a failed write is retried in the
  consumer's thread as below, before anything newer is stored.
- An invalid message is rejected without requeue: the broker dead-letters it to billing_queue.dlq.
- Database down: nothing is acknowledged, the batch is retried with backoff (heartbeats go on).
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
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pika
import pika.adapters.blocking_connection
import pika.exceptions
from pg8000.exceptions import DatabaseError

from billing_app.store import Order, insert_orders
from common.amqp import BrokerSettings
from common.db import DatabaseUnavailable, Pool
from common.orders import InvalidOrder, normalise_order

log = logging.getLogger(__name__)
# Where the consumer reports its state to the HTTP API's /health (/tmp is a tmpfs private to the container).
STATUS_FILE = "/tmp/billing-consumer.json"  # noqa: S108
Channel = pika.adapters.blocking_connection.BlockingChannel
# Each batch costs a commit (a WAL flush) and an ack; 500 drained a backlog ~1.6 times as fast as 100.
DEFAULT_BATCH_SIZE = 500


@dataclass(frozen=True)
class ConsumerSettings:
    prefetch: int
    batch_size: int
    batch_wait: float
    status_file: str


@dataclass
class _Delivery:
    tag: int
    order: Order


def parse_message(properties: pika.BasicProperties, body: bytes) -> Order:
    """The order carried by a message, or InvalidOrder saying why it cannot be stored."""
    try:
        message_id = str(uuid.UUID(properties.message_id or ""))
    except ValueError:
        raise InvalidOrder("message has no valid message_id (uuid)") from None
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidOrder("message body is not JSON") from None
    order = normalise_order(payload)
    headers = properties.headers or {}
    request_id = headers.get("x-request-id", "")
    if isinstance(request_id, bytes):
        request_id = request_id.decode("utf-8", "replace")
    return Order(message_id, order["user_id"], order["number_of_items"], order["total_amount"], str(request_id)[:128])


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

    # --- lifecycle ----------------------------------------------------------------------------

    def run(self) -> None:
        delay = 0.5
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self._consume()
            except _Abandon:
                pass
            except (pika.exceptions.AMQPError, DatabaseUnavailable) as exc:
                log.warning("consuming interrupted: %r", exc)
            self._set_connected(False)
            self._batch.clear()  # unacknowledged: the broker redelivers them (a write may still commit:
            # the redelivered copies are then found already stored)
            if self.stopping.is_set():
                break
            if time.monotonic() - started > 30:
                delay = 0.5
            log.info("reconnecting to the broker in %.1fs", delay)
            self.stopping.wait(delay)
            delay = min(delay * 2, 10.0)
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
            if self._batch:
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
        future = self._writer.submit(insert_orders, self.pool, [d.order for d in batch])

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
        if future.exception() is None:
            # Every tag up to this one is in ``batch`` or was rejected; newer deliveries have higher tags.
            channel.basic_ack(batch[-1].tag, multiple=True)
            new = future.result()
            log.info("stored %d orders (%d already stored), acknowledged %d", new, len(batch) - new, len(batch))
            return
        if not isinstance(future.exception(), (DatabaseUnavailable, DatabaseError)):
            raise future.exception()  # a bug: let the supervisor restart the consumer
        self._batch = batch + self._batch
        self._store_and_ack(connection, channel)

    def _time_to_flush(self) -> float:
        if not self._batch or self._writing is not None:
            return 0.5  # woken up earlier by a delivery or by the end of the write
        return max(0.0, self.settings.batch_wait - (time.monotonic() - self._first_at))

    # --- messages -----------------------------------------------------------------------------

    def _on_message(self, channel: Channel, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        try:
            order = parse_message(properties, body)
        except InvalidOrder as exc:
            self._dead_letter(channel, method.delivery_tag, properties, str(exc))
            return
        if not self._batch:
            self._first_at = time.monotonic()
        self._batch.append(_Delivery(method.delivery_tag, order))

    @staticmethod
    def _dead_letter(channel: Channel, tag: int, properties: pika.BasicProperties, reason: str) -> None:
        log.error("rejecting message %s to the dead-letter queue: %s", properties.message_id, reason)
        channel.basic_reject(tag, requeue=False)

    def _store_and_ack(self, connection: pika.BlockingConnection, channel: Channel) -> None:
        delay = 0.5
        refused: list[_Delivery] = []  # dead-lettered: settled, never acknowledged
        while True:
            batch = list(self._batch)  # deliveries keep arriving while we wait for the database
            try:
                new = insert_orders(self.pool, [d.order for d in batch])
                break
            except DatabaseUnavailable as exc:
                if self.stopping.is_set():
                    log.warning("stopping with %d orders not stored; the broker keeps them", len(batch))
                    raise _Abandon() from None
                log.warning(
                    "billing database unavailable (%s); %d orders held, retrying in %.1fs", exc, len(batch), delay
                )
                self._write_status()  # /health: the consumer is alive (and says the database is not)
                connection.sleep(delay)  # keeps heartbeats going
                delay = min(delay * 2, 5.0)
            except DatabaseError as exc:
                log.error("the database refused a batch (%s); storing its orders one by one", exc)
                new, batch, refused = self._store_one_by_one(channel, batch)
                break
        if batch:
            # Every tag up to this one is in ``batch`` or was rejected: later deliveries have higher tags.
            channel.basic_ack(max(d.tag for d in batch), multiple=True)
        settled = {d.tag for d in batch} | {d.tag for d in refused}
        self._batch = [d for d in self._batch if d.tag not in settled]
        if self._batch:
            self._first_at = time.monotonic()
        log.info("stored %d orders (%d already stored), acknowledged %d", new, len(batch) - new, len(batch))

    def _store_one_by_one(
        self, channel: Channel, batch: list[_Delivery]
    ) -> tuple[int, list[_Delivery], list[_Delivery]]:
        """Isolate the orders the database refuses (dead-lettered) from the good ones (stored).
        Returns the number of new rows, the stored deliveries and the rejected ones."""
        new, good, refused = 0, [], []
        for delivery in batch:
            try:
                new += insert_orders(self.pool, [delivery.order])
                good.append(delivery)
            except DatabaseError as exc:
                self._dead_letter(
                    channel,
                    delivery.tag,
                    pika.BasicProperties(message_id=delivery.order.message_id),
                    f"refused by the database: {exc}",
                )
                refused.append(delivery)
        return new, good, refused

    # --- health -------------------------------------------------------------------------------

    def _set_connected(self, connected: bool) -> None:
        self._connected = connected
        self._write_status(force=True)

    def _write_status(self, force: bool = False) -> None:
        """billing-app's HTTP API reads this file for /health."""
        now = time.time()
        if not force and now - self._status_written < 2:
            return
        self._status_written = now
        tmp = f"{self.settings.status_file}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump({"connected": self._connected, "updated": now, "pid": os.getpid()}, handle)
        os.replace(tmp, self.settings.status_file)


class _Abandon(pika.exceptions.AMQPError):
    """Leave the consume loop without acknowledging (stopping while the database is down)."""
