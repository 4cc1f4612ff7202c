"""The opt-in Prometheus (compose profile `monitoring`) on the test stack: every target scraped, the
counters an operator graphs moved by real orders, and the alerts that matter firing on real faults.

The test Prometheus runs the project's own configuration and rules, with only the cadence shortened:
scrapes and rule evaluations every second, and each rule's `for:` cut to a few seconds (written to a
temporary copy mounted over the image's files). Removed again at the end of the module.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_billing import DLQ, QUEUE, post_orders, publish_direct, stopped, wait_depth
from test_gateway import OUTPUT, png_size

from stack import ROOT, Stack, fresh_user, run, wait_for

pytestmark = pytest.mark.e2e

CONFIG = ROOT / "config" / "prometheus"
# Every scrape job of config/prometheus/prometheus.yml, by the service it watches.
JOBS = {"api-gateway-app", "inventory-app", "billing-app", "inventory-db", "billing-db", "rabbit-queue", "prometheus"}


class Prometheus:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]

    def value(self, expression: str) -> float | None:
        """The single value of an instant query, or None when it has no result."""
        result = self.get("/api/v1/query", query=expression)["result"]
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def alerts(self, name: str, state: str = "firing") -> list[dict[str, Any]]:
        return [
            a for a in self.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == name and a["state"] == state
        ]


def monitoring_config(workdir: Path) -> Path:
    """The project's configuration and rules with a one-second cadence and short `for:` periods."""
    prometheus = (CONFIG / "prometheus.yml").read_text()
    prometheus, scrapes = re.subn(r"(scrape_interval|evaluation_interval): *\S+", r"\1: 1s", prometheus)
    assert scrapes >= 2, "prometheus.yml sets scrape_interval and evaluation_interval"
    alerts, periods = re.subn(r"\bfor: *\S+", "for: 3s", (CONFIG / "alerts.yml").read_text())
    assert periods >= 3, "the rules have for: periods to shorten"
    for name, text in (("prometheus.yml", prometheus), ("alerts.yml", alerts)):
        (workdir / name).write_text(text)
        (workdir / name).chmod(0o644)
    override = workdir / "compose.monitoring-test.yml"
    override.write_text(
        "services:\n  prometheus:\n    volumes:\n"
        f"      - {workdir / 'prometheus.yml'}:/etc/prometheus/prometheus.yml:ro\n"
        f"      - {workdir / 'alerts.yml'}:/etc/prometheus/alerts.yml:ro\n"
    )
    return override


@pytest.fixture(scope="module")
def prometheus(stack: Stack) -> Iterator[Prometheus]:
    workdir = Path(tempfile.mkdtemp(prefix="pwc-prometheus-"))
    workdir.chmod(0o755)
    override = monitoring_config(workdir)
    with_monitoring = ("-f", str(override), "--profile", "monitoring")
    try:
        started = time.monotonic()
        stack.compose(*with_monitoring, "up", "--build", "--detach", "--wait", "--wait-timeout", "180", "prometheus")
        print(f"\nprometheus built and healthy in {time.monotonic() - started:.0f}s")
        yield Prometheus(int(stack.env["PROMETHEUS_PORT"]))
    finally:
        stack.compose(*with_monitoring, "rm", "--stop", "--force", "--volumes", "prometheus", check=False)
        run("docker", "volume", "rm", "--force", f"{stack.project}-prometheus", check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_ui_listens_on_the_hosts_loopback_only(stack: Stack, prometheus: Prometheus) -> None:
    published = json.loads(stack.inspect("prometheus", "{{json .NetworkSettings.Ports}}"))
    bindings = published["9090/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"], bindings
    assert stack.inspect("prometheus", "{{.Config.User}}") not in ("", "0", "root")


def test_every_target_is_scraped_and_up(prometheus: Prometheus) -> None:
    def all_up() -> list[dict[str, Any]] | None:
        targets = prometheus.get("/api/v1/targets")["activeTargets"]
        return targets if targets and all(t["health"] == "up" for t in targets) else None

    try:
        targets = wait_for(all_up, 60, interval=1, what="every scrape target to be up")
    except AssertionError:
        states = [
            (t["labels"]["job"], t["health"], t["lastError"])
            for t in prometheus.get("/api/v1/targets")["activeTargets"]
        ]
        raise AssertionError(f"targets: {states}") from None
    assert {t["labels"]["job"] for t in targets} == JOBS
    # billing-app is two programs: its HTTP API and its consumer, each with its own metrics.
    assert len([t for t in targets if t["labels"]["job"] == "billing-app"]) == 2
    assert prometheus.value("count(up == 1)") == len(targets)


def test_an_order_moves_the_counters_and_the_queue_metrics_prometheus_sees(
    prometheus: Prometheus, stack: Stack
) -> None:
    stored = "sum(billing_orders_stored_total)"
    confirmed = 'sum(gateway_publish_total{outcome="confirmed"})'
    published = f'sum(rabbitmq_queue_messages_published_total{{queue="{QUEUE}"}})'
    wait_for(lambda: prometheus.value(stored) is not None, 30, interval=1, what="a first scrape of billing-app")
    before = {q: prometheus.value(q) or 0 for q in (stored, confirmed, published)}
    post_orders(stack, fresh_user(), 10)

    def moved() -> bool:
        return all((prometheus.value(q) or 0) >= before[q] + 10 for q in (stored, confirmed, published))

    wait_for(moved, 30, interval=1, what="Prometheus to see the 10 orders in the gateway, the broker and billing-app")
    assert prometheus.value(f'rabbitmq_queue_consumers{{queue="{QUEUE}"}}') == 1
    assert prometheus.value('sum(http_requests_total{job="api-gateway-app",route="/api/billing",status="2xx"})') >= 10


def test_orders_queued_while_billing_app_is_stopped_fire_the_backlog_alert(
    prometheus: Prometheus, stack: Stack
) -> None:
    assert not prometheus.alerts("OrderBacklogWithoutConsumer")
    with stopped(stack, "billing-app"):
        post_orders(stack, fresh_user(), 5)
        wait_for(lambda: prometheus.alerts("OrderBacklogWithoutConsumer"), 60, interval=1, what="the backlog alert")
        (alert,) = prometheus.alerts("OrderBacklogWithoutConsumer")
        assert alert["labels"]["queue"] == QUEUE and alert["labels"]["severity"]
        assert alert["annotations"]["summary"]
    wait_depth(stack, QUEUE, 0)
    wait_for(lambda: not prometheus.alerts("OrderBacklogWithoutConsumer"), 60, interval=1, what="the alert to end")


def test_a_poison_message_fires_the_dead_letter_alert(prometheus: Prometheus, stack: Stack) -> None:
    # Earlier tests left messages in the dead-letter queue: an operator who dealt with them empties it.
    stack.exec("rabbit-queue", "rabbitmqctl", "--quiet", "purge_queue", DLQ)
    wait_for(lambda: not prometheus.alerts("OrdersDeadLettered"), 60, interval=1, what="the empty DLQ to be seen")
    publish_direct(stack, [{"body": "not an order", "message_id": str(uuid.uuid4())}])
    wait_depth(stack, DLQ, 1)
    wait_for(lambda: prometheus.alerts("OrdersDeadLettered"), 60, interval=1, what="the dead-letter alert")
    (alert,) = prometheus.alerts("OrdersDeadLettered")
    assert alert["labels"]["queue"] == DLQ


def test_a_graph_of_orders_stored_per_second_in_a_headless_browser(prometheus: Prometheus, stack: Stack) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed (Debian package `chromium`; .ci/run installs it)"
    rate = "sum(rate(billing_orders_stored_total[10s]))"
    user = fresh_user()
    deadline = time.monotonic() + 40
    burst = 5
    while time.monotonic() < deadline:  # a rising then falling load, for a graph with a shape
        post_orders(stack, user, burst, workers=4)
        burst = min(burst + 5, 40)
    wait_for(lambda: (prometheus.value(rate) or 0) > 0, 30, interval=1, what="a stored-orders rate above 0")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    screenshot = OUTPUT / "prometheus-orders-stored.png"
    screenshot.unlink(missing_ok=True)
    query = urllib.parse.urlencode({"g0.expr": rate, "g0.tab": "0", "g0.range_input": "2m"})
    with tempfile.TemporaryDirectory() as profile:
        run(
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
            "--disable-background-networking", "--disable-component-update", f"--user-data-dir={profile}",
            "--virtual-time-budget=15000", "--window-size=1280,900", f"--screenshot={screenshot}",
            f"{prometheus.url}/graph?{query}", timeout=180,
        )  # fmt: skip
    print(f"\nscreenshot of the orders-stored graph: {screenshot} ({screenshot.stat().st_size} bytes)")
    assert png_size(screenshot) == (1280, 900)
    assert screenshot.stat().st_size > 30_000, "the screenshot looks blank"
