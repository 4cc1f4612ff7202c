"""Prometheus metrics of the apps, written with the standard library: counters, gauges and histograms
kept in this process, served as text (exposition format 0.0.4) on a port of their own.

The metrics listener is a separate small server (``serve``), never the app's HTTP port: the gateway's
port is the public one, and a scrape must get through while every worker thread of the app is busy.
When an app runs several worker processes, worker 0 serves the port and the others a Unix socket each
(``serve_unix``); a scrape of the port gets every worker's series, each with a ``worker`` label
(``WorkerSet``), so that a counter restarts with its own process only, as Prometheus expects.

Label values are always from a bounded set (route templates, outcome names, upstream names), never a
raw path, id or error message, so that the number of series stays fixed whatever clients send.
Updating a metric costs a dictionary look-up and a lock (about a microsecond): cheap next to a request.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: from a millisecond (a cached answer) to the gateway's upstream read timeout.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A scrape that does not send its request within this many seconds is dropped.
SCRAPE_TIMEOUT = 5.0

Labels = tuple[str, ...]
Sample = tuple[str, Labels, Labels, float]  # name suffix, label names, label values, value


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels(names: Labels, values: Labels) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)) + "}"


class Metric:
    """A metric family: ``name`` with a fixed list of label names; one series per label values."""

    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names: Labels = tuple(labels)
        self._lock = threading.Lock()

    def samples(self) -> Iterable[Sample]:
        raise NotImplementedError

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for suffix, names, values, value in self.samples():
            lines.append(f"{self.name}{suffix}{_labels(names, values)} {_number(value)}")
        return "\n".join(lines) + "\n"


class Counter(Metric):
    """A count that only goes up. ``inc(*label_values)``; series named up front start at 0."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (), initial: Iterable[Labels] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[Labels, float] = {values: 0.0 for values in initial}
        if not self.label_names:
            self._values[()] = 0.0

    def inc(self, *values: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[values] = self._values.get(values, 0.0) + amount

    def value(self, *values: str) -> float:
        return self._values.get(values, 0.0)

    def samples(self) -> Iterable[Sample]:
        with self._lock:
            items = sorted(self._values.items())
        return [("_total", self.label_names, values, value) for values, value in items]


class Gauge(Metric):
    """A value that goes up and down: ``set``/``inc``/``dec``, or read from ``source`` at each scrape."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        source: Callable[[], Iterable[tuple[Labels, float]]] | None = None,
    ) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[Labels, float] = {} if self.label_names or source else {(): 0.0}
        self._source = source

    def set(self, value: float, *values: str) -> None:
        with self._lock:
            self._values[values] = value

    def inc(self, *values: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[values] = self._values.get(values, 0.0) + amount

    def dec(self, *values: str, amount: float = 1.0) -> None:
        self.inc(*values, amount=-amount)

    def value(self, *values: str) -> float:
        return self._values.get(values, 0.0)

    def samples(self) -> Iterable[Sample]:
        if self._source is not None:
            items = sorted(self._source())
        else:
            with self._lock:
                items = sorted(self._values.items())
        return [("", self.label_names, values, value) for values, value in items]


def _histogram_samples(
    names: Labels, bounds: tuple[float, ...], items: Iterable[tuple[Labels, list[float]]]
) -> list[Sample]:
    out: list[Sample] = []
    for values, series in items:
        cumulative = 0.0
        for bound, count in zip((*bounds, float("inf")), series[:-1], strict=True):
            cumulative += count
            out.append(("_bucket", (*names, "le"), (*values, _number(bound)), cumulative))
        out.append(("_sum", names, values, series[-1]))
        out.append(("_count", names, values, cumulative))
    return out


class Histogram(Metric):
    """Observations counted into cumulative ``le`` buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        super().__init__(name, help_text, labels)
        self.bounds = tuple(sorted(buckets))
        # Per series: one count per bucket (not cumulative) and one for above the last bound, then the sum.
        self._series: dict[Labels, list[float]] = {}
        if not self.label_names:
            self._series[()] = [0.0] * (len(self.bounds) + 2)

    def observe(self, value: float, *values: str) -> None:
        index = bisect.bisect_left(self.bounds, value)
        with self._lock:
            series = self._series.get(values)
            if series is None:
                series = self._series[values] = [0.0] * (len(self.bounds) + 2)
            series[index] += 1
            series[-1] += value

    def touch(self, *values: str) -> None:
        """Create the series with no observation yet (so that its first one is a rise)."""
        with self._lock:
            self._series.setdefault(values, [0.0] * (len(self.bounds) + 2))

    def count(self, *values: str) -> int:
        """Observations in the series whose first label values are ``values``."""
        with self._lock:
            matching = [s for v, s in self._series.items() if v[: len(values)] == values]
        return int(sum(sum(s[:-1]) for s in matching))

    def snapshot(self) -> list[tuple[Labels, list[float]]]:
        with self._lock:
            return sorted((values, list(series)) for values, series in self._series.items())

    def samples(self) -> Iterable[Sample]:
        return _histogram_samples(self.label_names, self.bounds, self.snapshot())


class RequestMetrics:
    """HTTP requests, one update per request for two families: ``<prefix>_total{method,route,status}``
    (a counter) and ``<prefix>_duration_seconds{method,route}`` (a histogram), both read at each scrape
    from one histogram by method, route and status class."""

    def __init__(self, registry: Registry, prefix: str = "http_requests") -> None:
        self._by_status = Histogram(f"{prefix}_by_status", "", ("method", "route", "status"))
        registry.register(_RequestCounts(prefix, self._by_status))
        registry.register(_RequestLatency(prefix.removesuffix("s") + "_duration_seconds", self._by_status))

    def observe(self, method: str, route: str, status: str, seconds: float) -> None:
        self._by_status.observe(seconds, method, route, status)

    def touch(self, method: str, route: str, status: str) -> None:
        self._by_status.touch(method, route, status)

    def count(self, method: str, route: str, status: str | None = None) -> int:
        return self._by_status.count(method, route, *([status] if status else []))


class _RequestCounts(Metric):
    kind = "counter"

    def __init__(self, name: str, histogram: Histogram) -> None:
        super().__init__(
            name, "HTTP requests answered, by method, route template and status class.", histogram.label_names
        )
        self._histogram = histogram

    def samples(self) -> Iterable[Sample]:
        return [("_total", self.label_names, v, sum(s[:-1])) for v, s in self._histogram.snapshot()]


class _RequestLatency(Metric):
    kind = "histogram"

    def __init__(self, name: str, histogram: Histogram) -> None:
        super().__init__(name, "Time to answer an HTTP request, by method and route template.", ("method", "route"))
        self._histogram = histogram

    def samples(self) -> Iterable[Sample]:
        merged: dict[Labels, list[float]] = {}
        for values, series in self._histogram.snapshot():
            total = merged.setdefault(values[:2], [0.0] * len(series))
            for i, n in enumerate(series):
                total[i] += n
        return _histogram_samples(self.label_names, self._histogram.bounds, sorted(merged.items()))


class Registry:
    """The metrics of one process, rendered in registration order."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}
        self._lock = threading.Lock()

    def register(self, metric: Metric) -> Any:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} is already registered")
            self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help_text: str, labels: Sequence[str] = (), **kw: Any) -> Counter:
        return self.register(Counter(name, help_text, labels, **kw))

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = (), **kw: Any) -> Gauge:
        return self.register(Gauge(name, help_text, labels, **kw))

    def histogram(self, name: str, help_text: str, labels: Sequence[str] = (), **kw: Any) -> Histogram:
        return self.register(Histogram(name, help_text, labels, **kw))

    def __iter__(self) -> Iterator[Metric]:
        with self._lock:
            return iter(list(self._metrics.values()))

    def render(self) -> bytes:
        parts = []
        for metric in self:
            try:
                parts.append(metric.render())
            except Exception:  # one broken source must not hide every other metric
                log.exception("metric %s could not be read", metric.name)
        return "".join(parts).encode("utf-8")


# --- the process itself, read from /proc at each scrape ------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _proc_stat() -> list[str]:
    with open("/proc/self/stat", encoding="ascii") as f:
        # The command name (field 2) may hold spaces: split after its closing parenthesis.
        return f.read().rsplit(")", 1)[1].split()


def _process_metrics(registry: Registry) -> None:
    started = time.time()

    def cpu() -> list[tuple[Labels, float]]:
        fields = _proc_stat()  # fields[11], [12]: utime, stime (fields 14 and 15 of the whole line)
        return [((), (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS)]

    def memory() -> list[tuple[Labels, float]]:
        with open("/proc/self/statm", encoding="ascii") as f:
            return [((), int(f.read().split()[1]) * _PAGE_SIZE)]

    def descriptors() -> list[tuple[Labels, float]]:
        return [((), len(os.listdir("/proc/self/fd")))]

    # CPU time only goes up, but it is read from the kernel: a gauge family named like the usual counter.
    registry.register(_ProcessCounter("process_cpu_seconds", "User and system CPU time of the process.", cpu))
    registry.gauge("process_resident_memory_bytes", "Resident memory of the process.", source=memory)
    registry.gauge("process_open_fds", "Open file descriptors of the process.", source=descriptors)
    registry.gauge("process_threads", "Threads of the process.", source=lambda: [((), threading.active_count())])
    registry.gauge("process_start_time_seconds", "Start of the process, Unix time.", source=lambda: [((), started)])


class _ProcessCounter(Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, source: Callable[[], list[tuple[Labels, float]]]) -> None:
        super().__init__(name, help_text)
        self._source = source

    def samples(self) -> Iterable[Sample]:
        return [("_total", (), values, value) for values, value in self._source()]


REGISTRY = Registry()
if os.path.exists("/proc/self/stat"):
    _process_metrics(REGISTRY)


# --- the listener ---------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    registry: Registry | WorkerSet = REGISTRY
    timeout = SCRAPE_TIMEOUT
    server_version = "metrics"
    sys_version = ""

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self._answer(404, b"not found: metrics are at /metrics\n", "text/plain; charset=utf-8")
            return
        self._answer(200, self.registry.render(), CONTENT_TYPE)

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would drown the access log; Prometheus records every scrape itself


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(port: int, registry: Registry | WorkerSet = REGISTRY, host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104
    """Serve ``registry`` at ``http://host:port/metrics`` from a background thread; returns the server."""
    handler = type("Handler", (_Handler,), {"registry": registry})
    server = _Server((host, port), handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on port %d (/metrics)", server.server_address[1])
    return server


def serve_unix(path: str, registry: Registry = REGISTRY) -> socketserver.UnixStreamServer:
    """Serve ``registry`` on the Unix socket ``path`` (a worker other than 0, read by worker 0's WorkerSet)."""
    handler = type("Handler", (_Handler,), {"registry": registry})
    if os.path.exists(path):
        os.unlink(path)  # left by this worker's previous process
    server = _UnixServer(path, handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def worker_socket(directory: str, worker: int) -> str:
    return os.path.join(directory, f"metrics-worker-{worker}.sock")


def _fetch(path: str, timeout: float) -> bytes:
    """The body of ``GET /metrics`` from the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(path)
        conn.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
        raise OSError(f"answered {head[:40]!r}")
    return body


_NAME_END = re.compile(r"[^a-zA-Z0-9_:]")


def _with_worker(sample: str, label: str) -> str:
    """``name{a="b"} 1`` as ``name{worker="k",a="b"} 1``; ``name 1`` as ``name{worker="k"} 1``."""
    end = _NAME_END.search(sample)
    if end is None:
        return sample
    cut = end.start()
    if sample[cut] == "{":
        return f"{sample[: cut + 1]}{label},{sample[cut + 1 :]}"
    return f"{sample[:cut]}{{{label}}}{sample[cut:]}"


class WorkerSet:
    """The metrics of an app's worker processes, as one exposition: this process's registry (worker 0) and
    every other worker's, read from its Unix socket at each scrape. Each sample gets a ``worker`` label;
    ``http_worker_up{worker}`` says whether that worker answered this scrape (its series are missing if not)."""

    def __init__(self, registry: Registry, workers: int, directory: str, timeout: float = 2.0) -> None:
        self.registry = registry
        self.workers = workers
        self.directory = directory
        self.timeout = timeout

    def render(self) -> bytes:
        texts: list[tuple[int, str]] = [(0, self.registry.render().decode("utf-8"))]
        up = ["# HELP http_worker_up Whether the worker process answered this scrape.", "# TYPE http_worker_up gauge"]
        up.append('http_worker_up{worker="0"} 1')
        for worker in range(1, self.workers):
            try:
                texts.append((worker, _fetch(worker_socket(self.directory, worker), self.timeout).decode("utf-8")))
                up.append(f'http_worker_up{{worker="{worker}"}} 1')
            except OSError as exc:
                log.debug("worker %d gave no metrics: %s", worker, exc)
                up.append(f'http_worker_up{{worker="{worker}"}} 0')
        # Families in the order they first appear; each one's samples from every worker, in worker order.
        families: dict[str, tuple[list[str], list[str]]] = {}
        for worker, text in texts:
            label = f'worker="{worker}"'
            current: list[str] | None = None
            for line in text.splitlines():
                if line.startswith("# "):
                    name = line.split(" ", 3)[2]
                    if name not in families:
                        families[name] = ([], [])
                    head, current = families[name]
                    if line not in head:
                        head.append(line)
                elif line and current is not None:
                    current.append(_with_worker(line, label))
        lines = [line for head, samples in families.values() for line in (*head, *samples)]
        return ("\n".join([*lines, *up]) + "\n").encode("utf-8")


# --- labels of HTTP requests, shared by the three apps --------------------------------------------------------

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def status_class(status: str | int) -> str:
    first = str(status)[:1]
    return f"{first}xx" if first and first in "12345" else "5xx"


_TEMPLATES: dict[str, str] = {}
_PARAMETER = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)(?::[^>]*)?>")


def route_template(rule: str | None) -> str:
    """``/api/movies/<movie_id>`` as ``/api/movies/{movie_id}``; "unmatched" when no route answered."""
    if rule is None:
        return "unmatched"
    template = _TEMPLATES.get(rule)
    if template is None:
        template = _TEMPLATES[rule] = _PARAMETER.sub(r"{\1}", rule)
    return template


def method_label(method: str) -> str:
    """The request method, or "other" for anything outside the usual set (methods are client-chosen)."""
    return method if method in METHODS else "other"
