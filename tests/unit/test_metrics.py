"""The apps' Prometheus metrics: the text they serve, and what a request, a publish or a pool changes."""

from __future__ import annotations

import io
import re
import threading
import urllib.error
import urllib.request

import bottle
import pytest

from common import metrics, request_context
from common.request_context import RequestContext

# One sample line of the text exposition format 0.0.4: name, optional labels, value.
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? \S+$')


def parse(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of every sample; fails on any line that is not valid exposition text."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        assert SAMPLE.match(line), f"not a sample line: {line!r}"
        key, value = line.rsplit(" ", 1)
        samples[key] = float(value)
    return samples


def test_a_counter_renders_help_type_and_a_total_per_label_set() -> None:
    registry = metrics.Registry()
    counter = registry.counter("orders", "Orders.", ("outcome",), initial=[("confirmed",), ("nacked",)])
    counter.inc("confirmed")
    counter.inc("confirmed", amount=2)
    text = registry.render().decode()
    assert "# HELP orders Orders.\n# TYPE orders counter\n" in text
    assert parse(text) == {'orders_total{outcome="confirmed"}': 3, 'orders_total{outcome="nacked"}': 0}


def test_a_histogram_has_cumulative_buckets_an_inf_bucket_a_sum_and_a_count() -> None:
    registry = metrics.Registry()
    histogram = registry.histogram("latency_seconds", "Latency.", ("route",), buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value, "/a")
    samples = parse(registry.render().decode())
    assert samples['latency_seconds_bucket{route="/a",le="0.1"}'] == 2  # a value on a bound counts in it
    assert samples['latency_seconds_bucket{route="/a",le="1"}'] == 3
    assert samples['latency_seconds_bucket{route="/a",le="+Inf"}'] == 4
    assert samples['latency_seconds_count{route="/a"}'] == 4
    assert samples['latency_seconds_sum{route="/a"}'] == pytest.approx(3.65)


def test_label_values_are_escaped() -> None:
    registry = metrics.Registry()
    registry.counter("odd", "Odd labels.", ("value",)).inc('a"b\\c\nd')
    assert 'odd_total{value="a\\"b\\\\c\\nd"} 1' in registry.render().decode()


def test_gauges_read_from_a_source_at_each_scrape() -> None:
    registry = metrics.Registry()
    state = {"n": 1}
    registry.gauge("depth", "Depth.", ("pool",), source=lambda: [(("p",), state["n"])])
    assert parse(registry.render().decode()) == {'depth{pool="p"}': 1}
    state["n"] = 5
    assert parse(registry.render().decode()) == {'depth{pool="p"}': 5}


def test_a_failing_source_hides_only_its_own_metric() -> None:
    registry = metrics.Registry()
    registry.gauge("broken", "Broken.", source=lambda: 1 / 0)
    registry.counter("fine", "Fine.").inc()
    assert parse(registry.render().decode()) == {"fine_total": 1}


def test_counters_stay_exact_under_concurrent_increments() -> None:
    registry = metrics.Registry()
    counter = registry.counter("hits", "Hits.", ("route",))

    def hit() -> None:
        for _ in range(20_000):
            counter.inc("/x")

    threads = [threading.Thread(target=hit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.value("/x") == 160_000


def test_a_metric_name_is_registered_once() -> None:
    registry = metrics.Registry()
    registry.counter("twice", "Once.")
    with pytest.raises(ValueError, match="twice"):
        registry.counter("twice", "Again.")


def test_routes_are_templates_and_methods_and_statuses_a_bounded_set() -> None:
    assert metrics.route_template("/api/movies/<movie_id>") == "/api/movies/{movie_id}"
    assert metrics.route_template("/api/movies/<movie_id:int>") == "/api/movies/{movie_id}"
    assert metrics.route_template(None) == "unmatched"
    assert metrics.method_label("GET") == "GET"
    assert metrics.method_label("BREW") == "other"
    assert [metrics.status_class(s) for s in ("200", 404, "503", "", "abc")] == ["2xx", "4xx", "5xx", "5xx", "5xx"]


def test_the_process_metrics_come_from_proc() -> None:
    samples = parse(metrics.REGISTRY.render().decode())
    assert samples["process_resident_memory_bytes"] > 1_000_000
    assert samples["process_cpu_seconds_total"] > 0
    assert samples["process_open_fds"] >= 3


def test_a_request_counts_under_its_route_template_never_its_raw_path() -> None:
    app = bottle.Bottle()

    @app.get("/things/<thing_id>")
    def thing(thing_id: str) -> str:
        return thing_id

    wrapped = RequestContext(app)
    # Each route's series exist from the start, at 0, so that the first error is a rise Prometheus sees.
    assert (
        'http_requests_total{method="GET",route="/things/{thing_id}",status="5xx"} 0'
        in metrics.REGISTRY.render().decode()
    )

    def call(path: str) -> None:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SERVER_NAME": "x", "SERVER_PORT": "80"}
        environ["wsgi.input"] = io.BytesIO()
        wrapped(environ, lambda *a: None)

    requests = request_context.requests
    before_ok = requests.count("GET", "/things/{thing_id}", "2xx")
    before_missing = requests.count("GET", "unmatched", "4xx")
    before_count = requests.count("GET", "/things/{thing_id}")
    for n in range(3):
        call(f"/things/{n}")
    call("/nowhere")
    assert requests.count("GET", "/things/{thing_id}", "2xx") == before_ok + 3
    assert requests.count("GET", "unmatched", "4xx") == before_missing + 1
    assert requests.count("GET", "/things/{thing_id}") == before_count + 4 - 1  # the 404 is unmatched
    text = metrics.REGISTRY.render().decode()
    samples = parse(text)
    assert samples['http_requests_total{method="GET",route="/things/{thing_id}",status="2xx"}'] == before_ok + 3
    # The latency histogram is by method and route (every status together).
    assert samples['http_request_duration_seconds_count{method="GET",route="/things/{thing_id}"}'] == before_count + 3
    assert "/things/1" not in text and "/nowhere" not in text


def test_the_listener_serves_metrics_and_nothing_else() -> None:
    registry = metrics.Registry()
    registry.counter("served", "Served.").inc()
    server = metrics.serve(0, registry, host="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:
            assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert parse(answer.read().decode()) == {"served_total": 1}
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{url}/health", timeout=5)
        assert missing.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_worker_zero_serves_every_workers_series_each_with_its_worker_label(tmp_path) -> None:
    """Several worker processes: worker 0's port shows its own series and those the others serve on their
    Unix sockets, one HELP/TYPE per family, each sample labelled with its worker; a worker that does not
    answer is reported by http_worker_up and its series are missing, not zeroed."""
    registries = []
    for worker in range(3):
        registry = metrics.Registry()
        requests = metrics.RequestMetrics(registry)
        for _ in range(worker + 1):
            requests.observe("GET", "/api/movies/{movie_id}", "2xx", 0.002)
        registry.gauge("http_connections_open", "Open.").set(10 + worker)
        registries.append(registry)
    siblings = [metrics.serve_unix(metrics.worker_socket(str(tmp_path), w), registries[w]) for w in (1, 2)]
    merged = metrics.WorkerSet(registries[0], 3, str(tmp_path))
    try:
        text = merged.render().decode()
        samples = parse(text)
        route = 'method="GET",route="/api/movies/{movie_id}",status="2xx"'
        for worker in range(3):
            assert samples[f'http_requests_total{{worker="{worker}",{route}}}'] == worker + 1
            assert samples[f'http_connections_open{{worker="{worker}"}}'] == 10 + worker
            assert samples[f'http_worker_up{{worker="{worker}"}}'] == 1
        assert text.count("# TYPE http_requests counter") == 1
        # Each family once, all its samples right after its TYPE line (the exposition format requires it).
        families, family = [], ""
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                family = line.split()[2]
                families.append(family)
            elif not line.startswith("#"):
                assert re.match(rf"{family}(_total|_bucket|_sum|_count)?{{", line), (family, line)
        assert len(families) == len(set(families))

        siblings[1].shutdown()
        siblings[1].server_close()
        samples = parse(merged.render().decode())
        assert samples['http_worker_up{worker="2"}'] == 0
        assert f'http_requests_total{{worker="2",{route}}}' not in samples
        assert samples[f'http_requests_total{{worker="1",{route}}}'] == 2
    finally:
        siblings[0].shutdown()
        siblings[0].server_close()


def test_a_worker_label_goes_first_whatever_the_other_labels_hold() -> None:
    assert metrics._with_worker("up 1", 'worker="1"') == 'up{worker="1"} 1'
    assert (
        metrics._with_worker('x_bucket{route="/a/{id}",le="+Inf"} 3', 'worker="2"')
        == 'x_bucket{worker="2",route="/a/{id}",le="+Inf"} 3'
    )
