"""The billing consumer's batch, acknowledgement and dead-letter decisions, without a broker or a
database: a channel that records basic_ack/basic_reject, a connection whose sleep records the waits,
and a store that refuses rows or fails the way pg8000 and the pool do (DatabaseError with the
server's SQLSTATE fields, StatementTimeout, DatabaseUnavailable).

What must hold: an order is acknowledged only once its batch is stored; only an order's own fault
(unreadable, or refused for its data) is dead-lettered, alone; a store outage acknowledges and
rejects nothing and retries; stopping during an outage leaves every delivery to the broker."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import pika
import pika.exceptions
import pytest
from pg8000.exceptions import DatabaseError

import billing_app.consumer
from billing_app.consumer import Consumer, ConsumerSettings
from common.amqp import BrokerSettings
from common.db import DatabaseUnavailable, DbSettings, Pool, StatementTimeout
from common.orders import Order


def server_error(code: str, message: str) -> DatabaseError:
    return DatabaseError({"S": "ERROR", "C": code, "M": message})


DUPLICATE = server_error("23505", 'duplicate key value violates unique constraint "orders_message_id_key"')
OUT_OF_RANGE = server_error("22003", "numeric field overflow")


class Channel:
    """Records what the consumer tells the broker about each delivery."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bool]] = []

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.calls.append(("ack", delivery_tag, multiple))

    def basic_reject(self, delivery_tag: int, requeue: bool = True) -> None:
        self.calls.append(("reject", delivery_tag, requeue))


class Connection:
    """Records the waits of the retry loop; ``during_sleep`` is what happens meanwhile (deliveries
    arrive, the database comes back, a SIGTERM)."""

    def __init__(self, during_sleep: Callable[[int], None] = lambda _n: None) -> None:
        self.sleeps: list[float] = []
        self.during_sleep = during_sleep

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        assert len(self.sleeps) <= 20, f"still retrying after 20 waits: {self.sleeps}"
        self.during_sleep(len(self.sleeps))


class Store:
    """Stands for insert_orders: every call and its orders; refuses a batch holding a row in
    ``refused`` with that row's error; while ``outage`` is set, every call raises it, and the n-th
    call raises ``fail_call[n]``."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.refused: dict[str, DatabaseError] = {}
        self.outage: BaseException | None = None
        self.fail_call: dict[int, BaseException] = {}
        self.stored: set[str] = set()

    def __call__(self, _pool: Pool, orders: list[Order]) -> int:
        ids = [o.message_id for o in orders]
        self.calls.append(ids)
        if self.outage is not None:
            raise self.outage
        if len(self.calls) in self.fail_call:
            raise self.fail_call[len(self.calls)]
        for message_id in ids:
            if message_id in self.refused:
                raise self.refused[message_id]
        new = set(ids) - self.stored
        self.stored |= new
        return len(new)


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Store:
    fake = Store()
    monkeypatch.setattr(billing_app.consumer, "insert_orders", fake)
    return fake


@pytest.fixture
def consumer(tmp_path: Path) -> Iterator[Consumer]:
    broker = BrokerSettings("broker", 5672, "user", "secret", "billing_queue", "billing", 30, 1.0)
    pool = Pool(DbSettings("db", 5432, "db", "user", "secret", 1.0, 1000), size=1, application_name="test")
    settings = ConsumerSettings(prefetch=10, batch_size=5, batch_wait=0.05, status_file=str(tmp_path / "status.json"))
    worker = Consumer(broker, pool, settings)
    yield worker
    worker._writer.shutdown()


def deliver(consumer: Consumer, channel: Channel, tag: int, body: object = None, message_id: str | None = None) -> str:
    """One delivery through _on_message, as pika hands it over; its message id."""
    message_id = message_id or str(uuid.uuid4())
    properties = pika.BasicProperties(message_id=message_id, headers={"x-request-id": f"req-{tag}"})
    payload = body if body is not None else {"user_id": 7, "number_of_items": tag, "total_amount": "1.50"}
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    consumer._on_message(channel, pika.spec.Basic.Deliver(delivery_tag=tag), properties, raw)  # type: ignore[arg-type]
    return message_id


def deliver_many(consumer: Consumer, channel: Channel, tags: range) -> list[str]:
    return [deliver(consumer, channel, tag) for tag in tags]


# --- reading deliveries -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"not json", {"user_id": 0, "number_of_items": 1, "total_amount": "1"}, {"user_id": 7}],
    ids=["not JSON", "user_id 0", "missing fields"],
)
def test_an_unreadable_delivery_is_dead_lettered_at_once_and_never_batched(
    consumer: Consumer, store: Store, body: object
) -> None:
    channel = Channel()
    deliver(consumer, channel, 1)
    deliver(consumer, channel, 2, body)
    assert channel.calls == [("reject", 2, False)]
    assert [d.tag for d in consumer._batch] == [1]


# --- _store_and_ack: the batch in hand --------------------------------------------------------------------


def test_a_stored_batch_is_acknowledged_with_one_multiple_ack_at_its_last_tag(consumer: Consumer, store: Store) -> None:
    channel, connection = Channel(), Connection()
    ids = deliver_many(consumer, channel, range(1, 5))
    consumer._store_and_ack(connection, channel)  # type: ignore[arg-type]
    assert store.calls == [ids]
    assert channel.calls == [("ack", 4, True)]
    assert consumer._batch == [] and connection.sleeps == []


@pytest.mark.parametrize("refused_tag", [1, 3, 5])
@pytest.mark.parametrize("error", [DUPLICATE, OUT_OF_RANGE], ids=["23505", "22003"])
def test_a_row_refused_for_its_data_is_dead_lettered_alone_and_the_rest_acked_at_the_right_tag(
    consumer: Consumer, store: Store, refused_tag: int, error: DatabaseError
) -> None:
    channel, connection = Channel(), Connection()
    ids = deliver_many(consumer, channel, range(1, 6))
    store.refused[ids[refused_tag - 1]] = error
    consumer._store_and_ack(connection, channel)  # type: ignore[arg-type]
    # The whole batch once, then each order alone.
    assert store.calls == [ids] + [[i] for i in ids]
    last_stored = 4 if refused_tag == 5 else 5
    assert channel.calls == [("reject", refused_tag, False), ("ack", last_stored, True)]
    assert store.stored == set(ids) - {ids[refused_tag - 1]}
    assert consumer._batch == [] and connection.sleeps == []


def test_two_refused_rows_are_each_dead_lettered_and_the_stored_ones_acked_once(
    consumer: Consumer, store: Store
) -> None:
    channel = Channel()
    ids = deliver_many(consumer, channel, range(1, 6))
    store.refused = {ids[1]: DUPLICATE, ids[4]: OUT_OF_RANGE}
    consumer._store_and_ack(Connection(), channel)  # type: ignore[arg-type]
    assert channel.calls == [("reject", 2, False), ("reject", 5, False), ("ack", 4, True)]


OUTAGES = {
    "42501 permission denied": server_error("42501", "permission denied for table orders"),
    "57014 statement timeout": StatementTimeout("canceling statement due to statement timeout (SQLSTATE 57014)"),
    "database unavailable": DatabaseUnavailable("cannot connect to billing-db:5432: [Errno 111] Connection refused"),
    "25006 read-only": server_error("25006", "cannot execute INSERT in a read-only transaction"),
}


@pytest.mark.parametrize("outage", OUTAGES.values(), ids=OUTAGES.keys())
def test_a_store_outage_acks_and_rejects_nothing_and_retries_with_backoff_until_the_store_works(
    consumer: Consumer, store: Store, outage: BaseException
) -> None:
    channel = Channel()
    ids = deliver_many(consumer, channel, range(1, 4))
    store.outage = outage
    seen_during_outage: list[list[tuple[str, int, bool]]] = []

    def meanwhile(sleeps: int) -> None:
        seen_during_outage.append(list(channel.calls))
        if sleeps == 2:
            ids.append(deliver(consumer, channel, 4))  # a delivery arrives while the consumer waits
        if sleeps == 4:
            store.outage = None  # the cause is gone

    connection = Connection(meanwhile)
    consumer._store_and_ack(connection, channel)  # type: ignore[arg-type]
    assert seen_during_outage == [[]] * 4, "nothing acknowledged or rejected during the outage"
    assert connection.sleeps == [0.5, 1.0, 2.0, 4.0]
    # Retried with the deliveries that arrived meanwhile; stored once, acknowledged once.
    assert store.calls[-1] == ids and len(store.calls) == 5
    assert channel.calls == [("ack", 4, True)]
    assert store.stored == set(ids) and consumer._batch == []


def test_an_outage_during_the_one_by_one_pass_acks_nothing_and_stores_the_rest_once_it_is_over(
    consumer: Consumer, store: Store
) -> None:
    channel = Channel()
    ids = deliver_many(consumer, channel, range(1, 4))
    store.refused[ids[0]] = DUPLICATE
    # The batch is refused, then its first row; then the database goes away.
    store.fail_call[3] = DatabaseUnavailable("cannot connect to billing-db:5432")
    connection = Connection()
    consumer._store_and_ack(connection, channel)  # type: ignore[arg-type]
    # The refused row was dead-lettered when it was found; the outage acknowledged nothing; the retry
    # stored the remaining two (not the dead-lettered one again) and acknowledged them at once.
    assert channel.calls == [("reject", 1, False), ("ack", 3, True)]
    assert connection.sleeps == [0.5]
    assert store.calls == [ids, [ids[0]], [ids[1]], ids[1:]]
    assert store.stored == set(ids[1:])


def test_stopping_during_an_outage_abandons_the_batch_without_acknowledging_anything(
    consumer: Consumer, store: Store
) -> None:
    channel = Channel()
    deliver_many(consumer, channel, range(1, 4))
    store.outage = server_error("42501", "permission denied for table orders")
    connection = Connection(lambda _n: consumer.stopping.set())  # SIGTERM while waiting to retry
    with pytest.raises(pika.exceptions.AMQPError):  # _Abandon: leave the consume loop, broker keeps them
        consumer._store_and_ack(connection, channel)  # type: ignore[arg-type]
    assert channel.calls == []
    assert connection.sleeps == [0.5] and len(store.calls) == 2
    assert [d.tag for d in consumer._batch] == [1, 2, 3]


def test_a_bug_in_storing_is_raised_not_taken_for_an_outage(consumer: Consumer, store: Store) -> None:
    channel = Channel()
    deliver_many(consumer, channel, range(1, 3))
    store.outage = TypeError("a bug")
    with pytest.raises(TypeError):
        consumer._store_and_ack(Connection(), channel)  # type: ignore[arg-type]
    assert channel.calls == []


# --- _settle_written: the batch the writer thread wrote ------------------------------------------------


def written(consumer: Consumer, channel: Channel, tags: range) -> Future[int]:
    """The writer thread's batch: deliveries taken from the batch in hand, and its future."""
    deliver_many(consumer, channel, tags)
    batch, consumer._batch = consumer._batch, []
    future: Future[int] = Future()
    consumer._writing = (future, batch)
    return future


def test_a_write_still_running_is_left_alone(consumer: Consumer, store: Store) -> None:
    channel = Channel()
    written(consumer, channel, range(1, 4))
    consumer._settle_written(Connection(), channel)  # type: ignore[arg-type]
    assert channel.calls == [] and consumer._writing is not None


def test_a_finished_write_is_acknowledged_up_to_its_last_tag_and_newer_deliveries_stay_in_hand(
    consumer: Consumer, store: Store
) -> None:
    channel = Channel()
    future = written(consumer, channel, range(1, 4))
    deliver_many(consumer, channel, range(4, 6))  # received while the writer wrote
    future.set_result(3)
    consumer._settle_written(Connection(), channel)  # type: ignore[arg-type]
    assert channel.calls == [("ack", 3, True)]
    assert consumer._writing is None and [d.tag for d in consumer._batch] == [4, 5]
    assert store.calls == []


def test_a_failed_write_is_retried_in_front_of_newer_deliveries_and_all_acked_once_stored(
    consumer: Consumer, store: Store
) -> None:
    channel = Channel()
    future = written(consumer, channel, range(1, 4))
    newer = deliver_many(consumer, channel, range(4, 6))
    future.set_exception(DatabaseUnavailable("cannot connect to billing-db:5432"))
    consumer._settle_written(Connection(), channel)  # type: ignore[arg-type]
    assert store.calls[0][3:] == newer and len(store.calls[0]) == 5
    assert channel.calls == [("ack", 5, True)]
    assert consumer._writing is None and consumer._batch == []


def test_a_write_that_failed_on_a_refused_row_dead_letters_that_row_alone(consumer: Consumer, store: Store) -> None:
    channel = Channel()
    future = written(consumer, channel, range(1, 4))
    refused = consumer._writing[1][1].order.message_id  # type: ignore[index]
    store.refused[refused] = DUPLICATE
    future.set_exception(DUPLICATE)
    consumer._settle_written(Connection(), channel)  # type: ignore[arg-type]
    assert channel.calls == [("reject", 2, False), ("ack", 3, True)]


def test_a_write_that_failed_with_a_bug_is_raised(consumer: Consumer, store: Store) -> None:
    channel = Channel()
    future = written(consumer, channel, range(1, 3))
    future.set_exception(KeyError("bug"))
    with pytest.raises(KeyError):
        consumer._settle_written(Connection(), channel)  # type: ignore[arg-type]
    assert channel.calls == []
