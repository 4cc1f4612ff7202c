"""A refused connection to the broker (nothing listens on its port: it is starting) is told from the other
connection failures, whichever pika connection type reports it: the apps retry the first every second and back
off on the others (common/amqp.py)."""

from __future__ import annotations

import socket
import threading

import pika
import pika.exceptions
import pytest

from common.amqp import connection_refused


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def parameters(port: int) -> pika.ConnectionParameters:
    return pika.ConnectionParameters("127.0.0.1", port, connection_attempts=1, socket_timeout=2, stack_timeout=4)


def test_a_refused_blocking_connection_is_refused() -> None:
    """billing-app's consumer: BlockingConnection raises AMQPConnectionError(AMQPConnectorSocketConnectError)."""
    with pytest.raises(pika.exceptions.AMQPConnectionError) as raised:
        pika.BlockingConnection(parameters(closed_port()))
    assert connection_refused(raised.value)


def test_a_refused_select_connection_is_refused() -> None:
    """The gateway's publisher: SelectConnection reports AMQPConnectionError(AMQPConnectionWorkflowFailed)."""
    errors: list[BaseException] = []

    def on_error(connection: pika.SelectConnection, error: BaseException) -> None:
        errors.append(error)
        connection.ioloop.stop()

    connection = pika.SelectConnection(parameters(closed_port()), on_open_error_callback=on_error)
    connection.ioloop.start()
    connection.ioloop.close()
    assert len(errors) == 1 and connection_refused(errors[0]), errors


def test_a_server_that_accepts_and_hangs_up_is_not_refused() -> None:
    """Something listens but is no broker (or a broker closing the connection): back off, not 1 s retries."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()

        def hang_up() -> None:
            peer, _ = server.accept()
            peer.close()

        threading.Thread(target=hang_up, daemon=True).start()
        with pytest.raises(pika.exceptions.AMQPConnectionError) as raised:
            pika.BlockingConnection(parameters(server.getsockname()[1]))
    assert not connection_refused(raised.value)


@pytest.mark.parametrize(
    "error",
    [
        pika.exceptions.ProbableAuthenticationError("ACCESS_REFUSED"),
        pika.exceptions.AMQPConnectionError(TimeoutError("timed out")),
        pika.exceptions.AMQPConnectionError(socket.gaierror(-2, "Name or service not known")),
        pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED - broker forced connection closure"),
    ],
    ids=["login refused", "timeout", "unknown host", "closed by the broker"],
)
def test_other_failures_are_not_refused(error: BaseException) -> None:
    assert not connection_refused(error)
