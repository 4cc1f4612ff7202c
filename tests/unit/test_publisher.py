"""The order message through pika at both edges: the properties the gateway's publisher sends are
read back by billing-app's consumer as the same order."""

from __future__ import annotations

import pika

from api_gateway_app.publisher import pika_properties
from billing_app.consumer import received_message
from common.orders import Order, message_id, normalise_order, order_message, read_order


def test_the_published_properties_carry_the_order_message_and_read_back_as_the_same_order() -> None:
    key = message_id(None)
    sent = order_message(normalise_order({"user_id": 3, "number_of_items": 1, "total_amount": 9}), key, "req-9")
    properties = pika_properties(sent)
    assert (properties.content_type, properties.delivery_mode) == ("application/json", 2)
    assert (properties.message_id, properties.timestamp, properties.app_id) == (key, sent.timestamp, "api-gateway-app")
    assert properties.headers == {"x-request-id": "req-9"}
    # As the broker delivers them: encoded for the wire and decoded again.
    encoded = b"".join(properties.encode())
    delivered = pika.BasicProperties()
    delivered.decode(encoded)
    received = received_message(delivered, sent.body)
    assert received == sent
    assert read_order(received) == Order(key, 3, 1, "9.00", "req-9")
