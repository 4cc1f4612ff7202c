"""The apps' /metrics, as Prometheus (or an operator with curl inside the backend network) reads them:
on a port of their own that the host never sees, in bounded label sets, moved by what users do."""

from __future__ import annotations

import json
import uuid

import pytest
from test_billing import QUEUE, assert_stored_exactly_once, order, post_orders, publish_direct, wait_depth

from stack import Metrics, Stack, fresh_user, internal_http, run, scrape, wait_for

pytestmark = pytest.mark.e2e

APP_TARGETS = ("api-gateway-app", "inventory-app", "billing-app", "billing-consumer")


def test_every_app_serves_its_metrics_inside_the_backend_network_and_never_on_a_published_port(stack: Stack) -> None:
    for target in APP_TARGETS:
        scraped = scrape(stack, target)
        assert "# TYPE process_cpu_seconds counter" in scraped.text, target
        assert scraped.value("process_resident_memory_bytes") > 10_000_000, target
    # Not through the public port, and not on the internal apps' API port either.
    public = stack.http("GET", "/metrics")
    assert public.status == 404 and "error" in public.json()
    assert internal_http(stack, "inventory-app", "GET", "/metrics").status == 404
    # The host reaches only the gateway's API port.
    for service in ("api-gateway-app", "inventory-app", "billing-app"):
        published = json.loads(stack.inspect(service, "{{json .NetworkSettings.Ports}}"))
        bound = {port for port, bindings in published.items() if bindings}
        assert bound == ({"3000/tcp"} if service == "api-gateway-app" else set()), (service, published)


def test_an_order_moves_the_gateways_publish_and_request_counters_and_billing_apps_stored_count(
    stack: Stack,
) -> None:
    user = fresh_user()
    gateway, consumer = scrape(stack, "api-gateway-app"), scrape(stack, "billing-consumer")
    message_ids = post_orders(stack, user, 5)
    assert_stored_exactly_once(stack, user, message_ids, timeout=60)

    def consumer_counted() -> Metrics | None:
        now = scrape(stack, "billing-consumer")
        return (
            now
            if now.value("billing_orders_stored_total") >= consumer.value("billing_orders_stored_total") + 5
            else None
        )

    consumer_after = wait_for(consumer_counted, 30, what="billing-app's stored count")
    gateway_after = scrape(stack, "api-gateway-app")

    def grew(before: Metrics, after: Metrics, name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert grew(gateway, gateway_after, "gateway_publish_total", outcome="confirmed") == 5
    assert grew(gateway, gateway_after, "gateway_publish_duration_seconds_count") == 5
    posted = {"method": "POST", "route": "/api/billing", "status": "2xx"}
    assert grew(gateway, gateway_after, "http_requests_total", **posted) == 5
    assert grew(gateway, gateway_after, "http_request_duration_seconds_count", method="POST", route="/api/billing") == 5
    assert grew(consumer, consumer_after, "billing_messages_received_total") == 5
    assert grew(consumer, consumer_after, "billing_orders_stored_total") == 5
    assert grew(consumer, consumer_after, "billing_batch_size_sum") == 5
    assert grew(consumer, consumer_after, "billing_store_duration_seconds_count") >= 1
    assert consumer_after.value("billing_consumer_connected") == 1
    assert consumer_after.value("billing_store_outage") == 0
    assert gateway_after.value("gateway_broker_connected") == 1
    assert gateway_after.value("gateway_broker_blocked") == 0


def test_a_message_delivered_twice_counts_once_as_stored_and_once_as_a_duplicate(stack: Stack) -> None:
    user = fresh_user()
    before = scrape(stack, "billing-consumer")
    twice = str(uuid.uuid4())
    publish_direct(stack, [{"body": json.dumps(order(user)), "message_id": twice}] * 2)
    assert_stored_exactly_once(stack, user, [twice], timeout=60)
    wait_depth(stack, QUEUE, 0)

    def settled() -> Metrics | None:
        now = scrape(stack, "billing-consumer")
        seen = now.value("billing_messages_received_total") - before.value("billing_messages_received_total")
        return (
            now
            if seen >= 2
            and now.value("billing_duplicates_skipped_total") > before.value("billing_duplicates_skipped_total")
            else None
        )

    after = wait_for(settled, 30, what="both deliveries to be counted")
    assert after.value("billing_orders_stored_total") - before.value("billing_orders_stored_total") == 1
    assert after.value("billing_duplicates_skipped_total") - before.value("billing_duplicates_skipped_total") == 1


def test_requests_are_counted_by_route_template_so_ids_and_unknown_paths_add_no_series(stack: Stack) -> None:
    before = {target: scrape(stack, target) for target in ("api-gateway-app", "inventory-app")}
    ids = [900_000_000 + n for n in range(30)]
    for movie_id in ids:
        assert stack.http("GET", f"/api/movies/{movie_id}").status == 404
    for path in ("/nowhere/1", "/nowhere/2", "/api/moviesX"):
        assert stack.http("GET", path).status == 404
    one = {"method": "GET", "route": "/api/movies/{movie_id}", "status": "4xx"}
    for target, earlier in before.items():
        after = scrape(stack, target)
        assert after.value("http_requests_total", **one) - earlier.value("http_requests_total", **one) == 30, target
        routes = {labels["route"] for labels in after.series("http_requests_total")}
        assert not any(str(i) in after.text for i in ids), f"{target}: an id became a label"
        assert not any("nowhere" in route or "moviesX" in route for route in routes), routes
    gateway = scrape(stack, "api-gateway-app")
    unmatched = {"method": "GET", "route": "unmatched", "status": "4xx"}
    gateway_before = before["api-gateway-app"]
    assert (
        gateway.value("http_requests_total", **unmatched) - gateway_before.value("http_requests_total", **unmatched)
        == 3
    )
    proxied = "gateway_upstream_duration_seconds_count"
    assert (
        gateway.value(proxied, upstream="inventory-app") - gateway_before.value(proxied, upstream="inventory-app") >= 30
    )


def test_the_pools_report_connections_in_use_and_idle_and_failures_when_the_database_is_gone(stack: Stack) -> None:
    assert stack.http("GET", "/api/movies?limit=1").status == 200
    inventory = scrape(stack, "inventory-app")
    assert inventory.value("db_pool_connections", pool="inventory-app", state="idle") >= 1
    assert inventory.value("db_pool_waiting", pool="inventory-app") == 0
    failures = inventory.value("db_pool_failures_total", pool="inventory-app")
    run("docker", "stop", stack.container("inventory-db"))
    try:
        assert stack.http("GET", "/api/movies?limit=1").status == 503
        during = scrape(stack, "inventory-app")
        assert during.value("db_pool_failures_total", pool="inventory-app") > failures
        assert during.value("http_requests_total", route="/api/movies", status="5xx") >= 1
    finally:
        run("docker", "start", stack.container("inventory-db"))
        stack.wait_healthy()
