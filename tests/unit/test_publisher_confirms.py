"""The gateway publisher's bookkeeping of publisher confirms, without a broker: the I/O thread's
callbacks are driven with pika's own frame objects, and ``publish()`` runs against a small I/O loop
on a real thread. What each web thread learns must be exactly what the broker said: confirmed,
PublishFailed (never queued), or PublishUnconfirmed (fate unknown)."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pika
import pika.frame
import pytest
from pika.spec import Basic, Connection

from api_gateway_app import publisher as publisher_module
from api_gateway_app.publisher import BrokerBlocked, Publisher, PublishFailed, PublishUnconfirmed
from common.amqp import BrokerSettings
from common.orders import Message, normalise_order, order_message

SETTINGS = BrokerSettings("broker", 5672, "user", "secret", "billing_queue", "billing", 30, 1.0)


def message() -> Message:
    order = normalise_order({"user_id": 3, "number_of_items": 1, "total_amount": "9.99"})
    return order_message(order, str(uuid.uuid4()), "req-1")


class Channel:
    """Stands for the open pika channel: records what was published; ``on_publish`` plays the broker."""

    is_open = True

    def __init__(self) -> None:
        self.published: list[tuple[str, str, pika.BasicProperties, bool]] = []
        self.on_publish: Callable[[int], None] = lambda _tag: None

    def basic_publish(
        self, exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties, mandatory: bool
    ) -> None:
        self.published.append((exchange, routing_key, properties, mandatory))
        self.on_publish(len(self.published))


def ready_publisher(confirm_timeout: float = 1.0) -> tuple[Publisher, Channel]:
    """A publisher as it is once its channel is in confirm mode."""
    publisher = Publisher(SETTINGS, confirm_timeout)
    channel = Channel()
    publisher._channel = channel  # type: ignore[assignment]
    publisher._on_confirm_mode(pika.frame.Method(1, pika.spec.Confirm.SelectOk()))
    return publisher, channel


def publish_on_loop(publisher: Publisher, sent: Message | None = None) -> Future[None]:
    """What the I/O thread does with a message a web thread handed over: its future."""
    future: Future[None] = Future()
    publisher._publish_on_loop(sent or message(), future)
    return future


def ack(tag: int, multiple: bool = False) -> pika.frame.Method:
    return pika.frame.Method(1, Basic.Ack(delivery_tag=tag, multiple=multiple))


def nack(tag: int, multiple: bool = False) -> pika.frame.Method:
    return pika.frame.Method(1, Basic.Nack(delivery_tag=tag, multiple=multiple))


def outcome(future: Future[None]) -> str:
    """ "pending", "confirmed", or the name of the exception the web thread gets."""
    if not future.done():
        return "pending"
    error = future.exception()
    return "confirmed" if error is None else type(error).__name__


# --- the I/O thread's callbacks ---------------------------------------------------------------------


def test_a_message_is_published_persistent_and_mandatory_to_the_configured_exchange_with_the_next_tag() -> None:
    publisher, channel = ready_publisher()
    futures = [publish_on_loop(publisher) for _ in range(3)]
    assert sorted(publisher._pending) == [1, 2, 3]
    assert [(e, k, p.delivery_mode, m) for e, k, p, m in channel.published] == [
        ("billing", "billing_queue", 2, True)
    ] * 3
    assert [outcome(f) for f in futures] == ["pending"] * 3


def test_a_single_ack_confirms_its_own_message_only() -> None:
    publisher, _ = ready_publisher()
    futures = [publish_on_loop(publisher) for _ in range(3)]
    publisher._on_confirm(ack(2))
    assert [outcome(f) for f in futures] == ["pending", "confirmed", "pending"]
    assert sorted(publisher._pending) == [1, 3]


def test_a_multiple_ack_confirms_every_pending_message_up_to_its_tag() -> None:
    publisher, _ = ready_publisher()
    futures = [publish_on_loop(publisher) for _ in range(4)]
    publisher._on_confirm(ack(1))
    publisher._on_confirm(ack(3, multiple=True))
    assert [outcome(f) for f in futures] == ["confirmed", "confirmed", "confirmed", "pending"]
    assert sorted(publisher._pending) == [4]


def test_a_nack_single_or_multiple_fails_its_messages_and_only_those() -> None:
    publisher, _ = ready_publisher()
    futures = [publish_on_loop(publisher) for _ in range(5)]
    publisher._on_confirm(nack(1))
    publisher._on_confirm(nack(3, multiple=True))
    publisher._on_confirm(ack(5))
    assert [outcome(f) for f in futures] == ["PublishFailed"] * 3 + ["pending", "confirmed"]
    assert "refused" in str(futures[2].exception())


def test_a_confirm_for_a_tag_no_longer_pending_changes_nothing() -> None:
    publisher, _ = ready_publisher()
    futures = [publish_on_loop(publisher) for _ in range(2)]
    publisher._on_confirm(ack(1))
    publisher._on_confirm(ack(1))  # again
    publisher._on_confirm(nack(7))  # never sent
    assert [outcome(f) for f in futures] == ["confirmed", "pending"]


def test_a_returned_unroutable_message_fails_at_its_ack_while_the_others_in_the_same_ack_are_confirmed() -> None:
    publisher, channel = ready_publisher()
    sent = [message() for _ in range(3)]
    futures = [publish_on_loop(publisher, m) for m in sent]
    # The broker returns an unroutable mandatory message (basic.return) before acking it.
    returned = channel.published[1][2]
    publisher._on_return(channel, Basic.Return(312, "NO_ROUTE", "billing", "billing_queue"), returned, b"")  # type: ignore[arg-type]
    publisher._on_confirm(ack(3, multiple=True))
    assert [outcome(f) for f in futures] == ["confirmed", "PublishFailed", "confirmed"]
    assert "could not be routed" in str(futures[1].exception())
    assert publisher._returned == set()


@pytest.mark.parametrize("lost", ["connection", "channel"])
def test_messages_sent_and_not_confirmed_when_the_link_is_lost_are_unconfirmed_never_failed(lost: str) -> None:
    publisher, channel = ready_publisher()
    futures = [publish_on_loop(publisher) for _ in range(3)]
    publisher._on_confirm(ack(1))
    publisher._on_return(channel, Basic.Return(312, "NO_ROUTE"), channel.published[2][2], b"")  # type: ignore[arg-type]
    if lost == "channel":
        publisher._on_channel_closed(channel, Exception("channel closed by the broker"))  # type: ignore[arg-type]
        assert publisher.state == "down"
    else:
        publisher._unconfirm_pending("connection to the broker lost")
    assert [outcome(f) for f in futures] == ["confirmed", "PublishUnconfirmed", "PublishUnconfirmed"]
    assert (publisher._pending, publisher._returned) == ({}, set())


def test_delivery_tags_start_again_at_one_on_the_next_channel() -> None:
    publisher, _ = ready_publisher()
    first = [publish_on_loop(publisher) for _ in range(2)]
    publisher._unconfirm_pending("connection to the broker lost")
    publisher._channel = Channel()  # type: ignore[assignment]
    publisher._on_confirm_mode(pika.frame.Method(1, pika.spec.Confirm.SelectOk()))
    again = publish_on_loop(publisher)
    publisher._on_confirm(ack(1))
    assert [outcome(f) for f in first] == ["PublishUnconfirmed"] * 2
    assert outcome(again) == "confirmed"


def test_on_the_loop_nothing_is_published_on_a_closed_channel_while_blocked_or_when_the_web_thread_gave_up() -> None:
    publisher, channel = ready_publisher()
    gave_up: Future[None] = Future()
    gave_up.cancel()
    publisher._publish_on_loop(message(), gave_up)
    publisher._on_blocked(None, pika.frame.Method(0, Connection.Blocked(reason="low on memory")))  # type: ignore[arg-type]
    blocked = publish_on_loop(publisher)
    publisher._on_unblocked(None, pika.frame.Method(0, Connection.Unblocked()))  # type: ignore[arg-type]
    channel.is_open = False
    closed = publish_on_loop(publisher)
    assert (outcome(blocked), outcome(closed)) == ("BrokerBlocked", "PublishFailed")
    assert channel.published == [] and publisher._pending == {}


# --- publish() from a web thread, against an I/O loop on its own thread ------------------------------


class Loop:
    """Runs callbacks handed over with ``add_callback_threadsafe`` on its own thread, like pika's
    ioloop; ``hold()`` keeps it from running them (an I/O thread busy elsewhere)."""

    def __init__(self) -> None:
        self._callbacks: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._running = threading.Event()
        self._running.set()
        self.closed = False
        self.handed_over = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def add_callback_threadsafe(self, callback: Callable[[], None]) -> None:
        if self.closed:
            raise RuntimeError("the I/O loop is closed")
        self.handed_over += 1
        self._callbacks.put(callback)

    def _run(self) -> None:
        while (callback := self._callbacks.get()) is not None:
            self._running.wait()
            callback()

    def hold(self) -> None:
        self._running.clear()

    def release(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self.release()
        self._callbacks.put(None)
        self._thread.join(timeout=5)

    def call(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop's thread and wait for it (a frame arriving from the broker)."""
        done = threading.Event()
        self._callbacks.put(lambda: (callback(), done.set()))
        assert done.wait(5)


class LoopConnection:
    def __init__(self, loop: Loop) -> None:
        self.ioloop = loop


@pytest.fixture
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.stop()


def connected(loop: Loop, confirm_timeout: float) -> tuple[Publisher, Channel]:
    publisher, channel = ready_publisher(confirm_timeout)
    publisher._connection = LoopConnection(loop)  # type: ignore[assignment]
    return publisher, channel


def test_publish_returns_once_the_broker_acks_the_message(loop: Loop) -> None:
    publisher, channel = connected(loop, confirm_timeout=5)
    # The broker's ack arrives on the I/O thread, after the publish.
    channel.on_publish = lambda tag: loop.add_callback_threadsafe(lambda: publisher._on_confirm(ack(tag)))
    publisher.publish(message())
    assert len(channel.published) == 1 and publisher._pending == {}


def test_publish_raises_publish_failed_when_the_broker_nacks(loop: Loop) -> None:
    publisher, channel = connected(loop, confirm_timeout=5)
    channel.on_publish = lambda tag: loop.add_callback_threadsafe(lambda: publisher._on_confirm(nack(tag)))
    with pytest.raises(PublishFailed, match="refused"):
        publisher.publish(message())


def test_a_message_the_io_thread_had_not_taken_in_time_is_failed_and_never_sent_afterwards(loop: Loop) -> None:
    publisher, channel = connected(loop, confirm_timeout=0.2)
    loop.hold()
    with pytest.raises(PublishFailed, match="did not take the message") as raised:
        publisher.publish(message())
    assert not isinstance(raised.value, PublishUnconfirmed)
    loop.release()
    loop.call(lambda: None)  # the handed-over callback has run by now
    assert channel.published == [] and publisher._pending == {}


def test_a_message_sent_and_not_confirmed_in_time_is_unconfirmed(loop: Loop) -> None:
    publisher, channel = connected(loop, confirm_timeout=0.2)
    with pytest.raises(PublishUnconfirmed, match="did not confirm"):
        publisher.publish(message())
    assert len(channel.published) == 1
    # A late ack finds the web thread gone: it settles the future nobody waits for, and nothing breaks.
    loop.call(lambda: publisher._on_confirm(ack(1)))
    assert publisher._pending == {}


def test_while_the_broker_blocks_publishing_publish_fails_at_once_without_handing_anything_over(loop: Loop) -> None:
    publisher, channel = connected(loop, confirm_timeout=5)
    blocked = pika.frame.Method(0, Connection.Blocked(reason="low on memory"))
    loop.call(lambda: publisher._on_blocked(None, blocked))  # type: ignore[arg-type]
    assert publisher.state == "blocked"
    with pytest.raises(BrokerBlocked):
        publisher.publish(message())
    assert loop.handed_over == 0 and channel.published == []
    loop.call(lambda: publisher._on_unblocked(None, pika.frame.Method(0, Connection.Unblocked())))  # type: ignore[arg-type]
    assert publisher.state == "ok"
    channel.on_publish = lambda tag: loop.add_callback_threadsafe(lambda: publisher._on_confirm(ack(tag)))
    publisher.publish(message())


def test_without_a_ready_connection_or_with_a_closed_loop_publish_fails_at_once(loop: Loop) -> None:
    never_connected = Publisher(SETTINGS, 5)
    with pytest.raises(PublishFailed, match="unavailable"):
        never_connected.publish(message())
    publisher, channel = connected(loop, confirm_timeout=5)
    loop.closed = True
    with pytest.raises(PublishFailed, match="unavailable"):
        publisher.publish(message())
    assert channel.published == []


def test_many_web_threads_publishing_at_once_each_get_their_own_confirm(loop: Loop) -> None:
    publisher, channel = connected(loop, confirm_timeout=5)

    # The broker acks every other message, the rest with one multiple ack at the end.
    def broker(tag: int) -> None:
        if tag % 2 == 0:
            loop.add_callback_threadsafe(lambda: publisher._on_confirm(ack(tag, multiple=True)))

    channel.on_publish = broker
    outcomes: list[Any] = []

    def web_thread() -> None:
        try:
            publisher.publish(message())
            outcomes.append("confirmed")
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            outcomes.append(exc)

    threads = [threading.Thread(target=web_thread) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert outcomes == ["confirmed"] * 20
    assert len(channel.published) == 20 and publisher._pending == {}


def test_each_publish_outcome_is_counted_once_under_its_own_name(loop: Loop) -> None:
    counted = publisher_module.published
    before = {o: counted.value(o) for o in publisher_module.OUTCOMES}
    publisher, channel = connected(loop, confirm_timeout=0.3)
    replies = iter([ack, nack, None])  # confirmed, nacked, then no answer at all (unconfirmed)

    def reply(tag: int) -> None:
        answer = next(replies)
        if answer is not None:
            loop.add_callback_threadsafe(lambda: publisher._on_confirm(answer(tag)))

    channel.on_publish = reply
    publisher.publish(message())
    with pytest.raises(PublishFailed):
        publisher.publish(message())
    with pytest.raises(PublishUnconfirmed):
        publisher.publish(message())
    loop.call(lambda: publisher._on_blocked(None, pika.frame.Method(0, Connection.Blocked(reason="disk"))))  # type: ignore[arg-type]
    with pytest.raises(BrokerBlocked):
        publisher.publish(message())
    with pytest.raises(PublishFailed):
        Publisher(SETTINGS, 5).publish(message())
    after = {o: counted.value(o) - before[o] for o in publisher_module.OUTCOMES}
    assert after == {"confirmed": 1, "nacked": 1, "returned": 0, "unconfirmed": 1, "blocked": 1, "unavailable": 1}
    assert publisher_module.broker_blocked.value() == 1
