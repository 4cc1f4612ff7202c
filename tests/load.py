"""A small, bounded HTTP load generator (standard library only) for tests and quick measurements.

Client threads run a *scenario* over and over; every request a scenario makes through
:meth:`Client.request` waits for the next slot of one global rate (or goes at once when the rate is
``None``), carries its own ``X-Request-ID`` and is recorded as a :class:`Result`: the status, or
no status at all when no HTTP answer came back (refused, reset, timed out). Every run is bounded
in time and in requests.

    def scenario(client: Client, iteration: int) -> None:
        client.request("GET", "/api/movies?limit=5")

    report = run_load("http://127.0.0.1:3000", scenario, clients=8, rate=20, seconds=30)
    print(report.summary())

In the background, while the caller does something else (kills containers, say):

    with Load("http://127.0.0.1:3000", scenario, clients=8, rate=20, seconds=600) as load:
        load.wait_sent(100)
        ...
    report = load.report

Several base URLs share the clients out (client i talks to ``base_url[i % len(base_url)]``). A scenario
of independent requests, the n-th of the run made by ``make(n)``: ``numbered(make, pause)``.
The one load generator of the repository: the failure suite, the swarm tests (tests/swarm/swarm_stack.py)
and quick measurements use it; the benchmark (bench/) drives ``wrk`` instead, for its throughput.

As a command: ``python tests/load.py http://127.0.0.1:3000/health --rate 50 --seconds 10``.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from stack import request_body, wait_for


@dataclass
class Result:
    """One request and what came back. ``started`` is in seconds since the run started."""

    client: int
    method: str
    path: str
    request_id: str
    started: float
    seconds: float
    status: int | None  # None: no HTTP answer at all
    error: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def answered(self) -> bool:
        return self.status is not None

    def json(self) -> Any:
        return json.loads(self.body)


class RunOver(Exception):
    """Raised by :meth:`Client.request` once the run's time or request budget is spent."""


class _Pacer:
    """Hands out request slots at a fixed rate, shared by every client thread; counts the slots
    served late (all clients busy waiting for slow answers)."""

    def __init__(self, rate: float | None, deadline: float, max_requests: int, stop: threading.Event) -> None:
        self.rate = rate
        self.deadline = deadline
        self.max_requests = max_requests
        self.stop = stop
        self.issued = 0
        self.late = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def next_slot(self) -> None:
        with self._lock:
            if self.issued >= self.max_requests:
                raise RunOver()
            slot = self.started + (self.issued / self.rate if self.rate else 0.0)
            self.issued += 1
        now = time.monotonic()
        if slot > now:
            if self.stop.wait(min(slot, self.deadline) - now):
                raise RunOver()
        elif self.rate and now - slot > 1.0:
            with self._lock:
                self.late += 1
        if time.monotonic() >= self.deadline or self.stop.is_set():
            raise RunOver()


class Client:
    """One client thread's connection to the server (a new TCP connection per request unless
    ``keep_alive``). Use it only from its own thread."""

    def __init__(
        self,
        index: int,
        base_url: str,
        pacer: _Pacer,
        record: Callable[[Result], None],
        timeout: float,
        keep_alive: bool,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected http://host:port, got {base_url!r}")
        self.index = index
        self.host = parts.hostname
        self.port = parts.port or 80
        self.timeout = timeout
        self.keep_alive = keep_alive
        self._pacer = pacer
        self._record = record
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Result:
        """Wait for the next slot, send, record and return the result (raises :class:`RunOver` when the run is over)."""
        self._pacer.next_slot()
        request_id = uuid.uuid4().hex
        data, all_headers = request_body(body, {"X-Request-ID": request_id, **(headers or {})}, raw)
        if not self.keep_alive:
            all_headers["Connection"] = "close"
        started = time.monotonic()
        result = Result(self.index, method, path, request_id, started - self._pacer.started, 0.0, None)
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._conn.request(method, path, body=data, headers=all_headers)
            answer = self._conn.getresponse()
            result.body = answer.read()
            result.status = answer.status
            result.headers = {k.lower(): v for k, v in answer.getheaders()}
            if answer.will_close or not self.keep_alive:
                self.close()
        except (OSError, http.client.HTTPException) as exc:
            result.error = f"{exc.__class__.__name__}: {exc}"
            self.close()
        result.seconds = time.monotonic() - started
        self._record(result)
        return result

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


Scenario = Callable[[Client, int], None]
# (method, path, JSON body or None) of the n-th request of a run.
RequestMaker = Callable[[int], tuple[str, str, Any]]


def numbered(make: RequestMaker, pause: float = 0.0) -> Scenario:
    """A scenario of independent requests: the n-th request of the run (counted from 1 over every
    client) is ``make(n)``; each client waits ``pause`` seconds after each answer."""
    numbers = itertools.count(1)
    lock = threading.Lock()

    def scenario(client: Client, _iteration: int) -> None:
        with lock:
            number = next(numbers)
        client.request(*make(number))
        if pause:
            time.sleep(pause)

    return scenario


@dataclass
class LoadReport:
    results: list[Result]
    seconds: float
    late: int  # slots served more than 1 s after their time
    errors: list[str]  # exceptions raised by the scenario itself (bugs in the caller's code)

    def statuses(self) -> Counter[str]:
        """Count of each status; ``"no answer"`` for requests that got none."""
        return Counter(str(r.status) if r.answered else "no answer" for r in self.results)

    def summary(self) -> dict[str, Any]:
        latencies = sorted(r.seconds for r in self.results if r.answered)

        def pct(p: float) -> float | None:
            return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 4) if latencies else None

        return {
            "requests": len(self.results),
            "seconds": round(self.seconds, 1),
            "per_second": round(len(self.results) / self.seconds, 1) if self.seconds else None,
            "statuses": dict(sorted(self.statuses().items())),
            "late_slots": self.late,
            "latency_p50": pct(0.5),
            "latency_p99": pct(0.99),
            "latency_max": round(latencies[-1], 4) if latencies else None,
        }

    def failures(self, expected: int = 200) -> list[str]:
        """Every request not answered ``expected``, and every error of the scenario itself, one line each."""
        lines = [
            f"{r.method} {r.path}: {r.status} {r.body[:200]!r}" if r.answered else f"{r.method} {r.path}: {r.error}"
            for r in self.results
            if r.status != expected
        ]
        return lines + self.errors

    def brief(self) -> str:
        return f"{len(self.results)} requests, {len(self.failures())} failed"

    def header_counts(self, name: str, missing: str | None = None) -> Counter[str]:
        """How many answers carried each value of the header ``name`` (lower case); answers without it
        count as ``missing``, or not at all when it is None."""
        values = (r.headers.get(name, missing) for r in self.results if r.answered)
        return Counter(value for value in values if value is not None)


class Load:
    """A load run in background threads; ``with Load(...) as load:`` runs until the block ends
    (or the time or request budget is spent), then ``load.report`` holds the results."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        scenario: Scenario,
        *,
        clients: int,
        rate: float | None,
        seconds: float,
        max_requests: int = 1_000_000,
        timeout: float = 30.0,
        keep_alive: bool = False,
    ) -> None:
        self.base_urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self.scenario = scenario
        self.clients = clients
        self.rate = rate
        self.seconds = seconds
        self.max_requests = max_requests
        self.timeout = timeout
        self.keep_alive = keep_alive
        self.stop_event = threading.Event()
        self.report: LoadReport | None = None
        self._results: list[Result] = []
        self._errors: list[str] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._pacer: _Pacer | None = None

    def _record(self, result: Result) -> None:
        with self._lock:
            self._results.append(result)

    def _client_loop(self, client: Client) -> None:
        iteration = 0
        try:
            while not self.stop_event.is_set():
                self.scenario(client, iteration)
                iteration += 1
        except RunOver:
            pass
        except Exception as exc:  # noqa: BLE001 - reported in LoadReport.errors, never swallowed silently
            with self._lock:
                self._errors.append(f"client {client.index}: {exc.__class__.__name__}: {exc}")
        finally:
            client.close()

    def start(self) -> Load:
        pacer = _Pacer(self.rate, time.monotonic() + self.seconds, self.max_requests, self.stop_event)
        self._pacer = pacer
        for index in range(self.clients):
            base_url = self.base_urls[index % len(self.base_urls)]
            client = Client(index, base_url, pacer, self._record, self.timeout, self.keep_alive)
            thread = threading.Thread(target=self._client_loop, args=(client,), name=f"load-{index}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    @property
    def started(self) -> float:
        """time.monotonic() when the run started; ``Result.started`` counts from here."""
        assert self._pacer is not None, "not started"
        return self._pacer.started

    def results_so_far(self) -> list[Result]:
        with self._lock:
            return list(self._results)

    @property
    def sent(self) -> int:
        """Requests done so far (answered or not)."""
        with self._lock:
            return len(self._results)

    @property
    def finished(self) -> bool:
        """Every client is done: the time or request budget is spent, or the run was stopped."""
        return not any(thread.is_alive() for thread in self._threads)

    def wait_sent(self, count: int, timeout: float = 120) -> None:
        """Wait until ``count`` requests are done (or the run is over before that)."""
        wait_for(lambda: self.sent >= count or self.finished, timeout, 0.2, f"{count} requests sent")

    def wait_finished(self, timeout: float) -> LoadReport:
        """Wait until the time or request budget is spent (failing after ``timeout``)."""
        wait_for(lambda: self.finished, timeout, 0.2, "the load to finish")
        return self.stop()

    def snapshot(self) -> LoadReport:
        """The report of what is done so far, while the run goes on."""
        return self._report([])

    def _report(self, extra_errors: list[str]) -> LoadReport:
        assert self._pacer is not None, "not started"
        with self._lock:
            return LoadReport(
                list(self._results),
                time.monotonic() - self._pacer.started,
                self._pacer.late,
                self._errors + extra_errors,
            )

    def stop(self) -> LoadReport:
        """Stop issuing requests, wait for those in flight (bounded by the request timeout)."""
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)
        stuck = [t.name for t in self._threads if t.is_alive()]
        self.report = self._report([f"{name}: still running after the request timeout" for name in stuck])
        return self.report

    def wait(self) -> LoadReport:
        """Wait until the time or request budget is spent."""
        for thread in self._threads:
            thread.join(timeout=self.seconds + self.timeout + 5)
        return self.stop()

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def run_load(base_url: str | Sequence[str], scenario: Scenario, **options: Any) -> LoadReport:
    """Run ``scenario`` (the options of :class:`Load`) until ``seconds`` or ``max_requests`` is reached."""
    return Load(base_url, scenario, **options).start().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="GET one URL at a fixed rate; print a JSON summary.")
    parser.add_argument("url", help="e.g. http://127.0.0.1:3000/health")
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second, all clients together")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="at most this long")
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--keep-alive", action="store_true", help="reuse one connection per client")
    args = parser.parse_args()
    parts = urlsplit(args.url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def get(client: Client, _iteration: int) -> None:
        client.request("GET", target)

    report = run_load(
        f"{parts.scheme}://{parts.netloc}",
        get,
        clients=args.clients,
        rate=args.rate,
        seconds=args.seconds,
        max_requests=args.max_requests,
        keep_alive=args.keep_alive,
    )
    print(json.dumps(report.summary(), indent=2))


if __name__ == "__main__":
    main()
