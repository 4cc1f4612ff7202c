"""CPU cost of the apps' request metrics, measured in-process (no Docker, no noise from other load):
a Bottle route answered through RequestContext with the metrics, and with the metric updates replaced by
no-ops, many times each, alternately; the difference per request is what the metrics cost.

    python3 bench/metrics_cost.py        (with the apps' dependencies installed, e.g. .venv-test/bin/python)
"""

from __future__ import annotations

import io
import statistics
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "apps"))

import bottle

from common import metrics, request_context
from common.metrics import Counter, Gauge, Histogram

CALLS = 20_000


def app() -> request_context.RequestContext:
    inner = bottle.Bottle()

    @inner.get("/api/movies/<movie_id>")
    def movie(movie_id: str) -> dict[str, str]:
        return {"id": movie_id}

    return request_context.RequestContext(inner)


def cpu_per_call(wrapped: request_context.RequestContext) -> float:
    environ = {"REQUEST_METHOD": "GET", "SERVER_NAME": "x", "SERVER_PORT": "80", "wsgi.input": io.BytesIO()}
    started = time.process_time()
    for n in range(CALLS):
        environ["PATH_INFO"] = f"/api/movies/{n}"
        wrapped(dict(environ), lambda *a: None)
    return (time.process_time() - started) / CALLS * 1e6


def main() -> None:
    request_context.access_log.disabled = True  # the same in both runs; its cost is not the metrics'
    wrapped = app()
    updates = {(cls, name): vars(cls)[name] for cls in (Counter, Gauge, Histogram)
               for name in ("inc", "dec", "set", "observe") if name in vars(cls)}  # fmt: skip
    with_metrics, without = [], []
    for _ in range(5):
        with_metrics.append(cpu_per_call(wrapped))
        for cls, name in updates:
            setattr(cls, name, lambda *_args, **_kwargs: None)
        without.append(cpu_per_call(wrapped))
        for (cls, name), function in updates.items():
            setattr(cls, name, function)
    on, off = statistics.median(with_metrics), statistics.median(without)
    update = (
        min(
            timeit.repeat(
                "requests.observe(method_label('GET'), route_template('/api/movies/<movie_id>'),"
                " status_class('200'), 0.004)",
                globals={"requests": request_context.requests, **vars(metrics)},
                number=CALLS,
                repeat=5,
            )
        )
        / CALLS
        * 1e6
    )
    print(f"one request's metric update alone (labels, one locked histogram update): {update:.2f} µs")
    print(f"request through RequestContext + Bottle: {on:.1f} µs CPU with the metrics, {off:.1f} µs without")
    print(f"the request metrics cost {on - off:.1f} µs per request (median of 5 x {CALLS} calls each)")


if __name__ == "__main__":
    main()
