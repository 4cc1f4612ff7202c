"""Benchmark of the stack against the physical limits of this machine.

Every figure is reported with its physical reference measured in the same run, and the ratio:
- HTTP: gateway vs the same request straight to inventory-app vs a bare waitress "hello" app;
- billing: confirmed POSTs vs pika publish-with-confirm (sequential and parallel);
- drain: billing-app storing a 20k backlog vs a no-op pika consumer (same prefetch) and PostgreSQL
  batched inserts;
- start-up, build, image sizes, idle CPU and memory.
Load is generated with wrk inside the gateway's network namespace (nsenter), so internal apps are
reached the same way as the gateway reaches them; only loopback/bridge addresses are targeted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PWC_TEST_PREFIX", "pwc-bench")
os.environ.setdefault("PWC_TEST_PORT", "3500")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from stack import PROJECT, SERVICES, Stack, make_env_file, run, wait_for

RESULTS = Path(__file__).resolve().parent / "results"
CORES = os.cpu_count() or 1


def save_results(result: dict[str, Any], suffix: str = "") -> Path:
    """Writes a run's figures to bench/results/<date><suffix>.json (-2, -3... if taken: earlier runs are cited)
    and returns the path."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{dt.date.today().isoformat()}{suffix}.json"
    for n in itertools.count(2):
        if not out.exists():
            break
        out = RESULTS / f"{dt.date.today().isoformat()}{suffix}-{n}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- wrk ------------------------------------------------------------------------------------------------


def parse_wrk(output: str) -> dict[str, Any]:
    def latency(pct: str) -> float | None:
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if not match:
            return None
        return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    total = re.search(r"(\d+) requests in", output)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "requests": int(total.group(1)) if total else 0,
        "errors": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sockets.groups())) if sockets else 0),
    }


def cpu_ns(container_id: str) -> int | None:
    """CPU time used so far by a container (cgroup v1 or v2, cgroupfs or systemd driver), or None."""
    candidates = (
        (f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage", 1),
        (f"/sys/fs/cgroup/cpu,cpuacct/docker/{container_id}/cpuacct.usage", 1),
        (f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat", 1000),
        (f"/sys/fs/cgroup/docker/{container_id}/cpu.stat", 1000),
    )
    for path, unit_ns in candidates:
        with contextlib.suppress(OSError):
            text = Path(path).read_text()
            if path.endswith("cpu.stat"):
                text = re.search(r"^usage_usec (\d+)", text, re.MULTILINE).group(1)
            return int(text) * unit_ns
    return None


class Wrk:
    """wrk runs from inside a container's network namespace; the CPU each container used during a
    run is divided by the requests served (microseconds of CPU per request). wrk, not tests/load.py
    (the tests' load generator): the figures are ceilings, and a Python client would be the bottleneck."""

    def __init__(self, stack: Stack, duration: int, scripts: Path, extra_containers: tuple[str, ...] = ()) -> None:
        self.stack = stack
        self.duration = duration
        self.scripts = scripts
        self.pid = stack.inspect("api-gateway-app", "{{.State.Pid}}")
        names = [stack.container(s) for s in SERVICES] + list(extra_containers)
        ids = run("docker", "inspect", "-f", "{{.Id}}", *names).stdout.split()
        self.containers = {name.removeprefix(stack.container("")): cid for name, cid in zip(names, ids, strict=True)}

    def _cpu(self) -> dict[str, int | None]:
        return {name: cpu_ns(cid) for name, cid in self.containers.items()}

    def wrk(self, url: str, connections: int, script: str | None = None) -> dict[str, Any]:
        args = [
            "nsenter",
            "-t",
            self.pid,
            "-n",
            "wrk",
            "-t",
            "2",
            "-c",
            str(connections),
            "-d",
            f"{self.duration}s",
            "--latency",
            "--timeout",
            "10s",
        ]
        if script:
            args += ["-s", str(self.scripts / script)]
        before = self._cpu()
        result = run(*args, url, timeout=self.duration + 60)
        after = self._cpu()
        figures = parse_wrk(result.stdout)
        served = figures["requests"]
        figures["cpu_us_per_request"] = {
            name: round((after[name] - before[name]) / 1000 / served)
            for name in after
            if after[name] is not None and before[name] is not None and served
        }
        log(
            f"  wrk -c{connections} {url} {script or ''}: {figures['rps']:.0f} req/s, "
            f"p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, errors {figures['errors']}"
        )
        return figures


def ip_of(stack: Stack, container: str) -> str:
    out = run("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", container)
    return out.stdout.split()[0]


# --- pika helpers run inside the app containers ------------------------------------------------------------

PUBLISH = r"""
import json, os, sys, threading, time, uuid
import pika
count, parallel = int(sys.argv[1]), int(sys.argv[2])
params = pika.ConnectionParameters("rabbit-queue", credentials=pika.PlainCredentials(
    os.environ["RABBITMQ_GATEWAY_USER"], os.environ["RABBITMQ_GATEWAY_PASSWORD"]))
body = json.dumps({"user_id": 7, "number_of_items": 1, "total_amount": "1.00"}).encode()
def worker(n):
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.confirm_delivery()
    for _ in range(n):
        channel.basic_publish("billing", os.environ.get("RABBITMQ_QUEUE", "billing_queue"), body,
            pika.BasicProperties(content_type="application/json", delivery_mode=2, message_id=str(uuid.uuid4())),
            mandatory=True)
    connection.close()
started = time.monotonic()
threads = [threading.Thread(target=worker, args=(count // parallel,)) for _ in range(parallel)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"messages": count // parallel * parallel, "seconds": time.monotonic() - started}))
"""

CONSUME_NOOP = r"""
import json, os, sys, time
import pika
count, prefetch, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
params = pika.ConnectionParameters("rabbit-queue", credentials=pika.PlainCredentials(
    os.environ["RABBITMQ_BILLING_USER"], os.environ["RABBITMQ_BILLING_PASSWORD"]))
connection = pika.BlockingConnection(params)
channel = connection.channel()
channel.basic_qos(prefetch_count=prefetch)
state = {"seen": 0, "started": None, "pending": 0}
def on_message(ch, method, properties, body):
    if state["started"] is None:
        state["started"] = time.monotonic()
    state["seen"] += 1
    state["pending"] += 1
    if state["pending"] >= batch or state["seen"] >= count:
        ch.basic_ack(method.delivery_tag, multiple=True)
        state["pending"] = 0
    if state["seen"] >= count:
        ch.stop_consuming()
channel.basic_consume(os.environ.get("RABBITMQ_QUEUE", "billing_queue"), on_message)
channel.start_consuming()
print(json.dumps({"messages": state["seen"], "seconds": time.monotonic() - state["started"]}))
connection.close()
"""

HELLO = r"""
import waitress
def app(environ, start_response):
    body = b'{"hello":"world"}'
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
waitress.serve(app, host="0.0.0.0", port=8080, threads=8, ident=None, _quiet=True)
"""


def python_in(stack: Stack, service: str, code: str, *args: str) -> dict[str, Any]:
    out = stack.exec(service, "python", "-c", code, *args).stdout
    return json.loads(out.strip().splitlines()[-1])


def purge(stack: Stack) -> None:
    stack.exec("rabbit-queue", "rabbitmqctl", "-q", "purge_queue", "billing_queue")


# --- measurements ----------------------------------------------------------------------------------------


def idle(stack: Stack, seconds: float, names: list[str] | None = None) -> dict[str, Any]:
    """CPU (% of the machine, from cgroup CPU time: healthcheck probes included, which ``docker stats`` samples
    mostly miss) and memory of each container (``names``, default the six) over ``seconds``."""
    names = names or [stack.container(s) for s in SERVICES]
    ids = dict(zip(names, run("docker", "inspect", "-f", "{{.Id}}", *names).stdout.split(), strict=True))
    before, started = {n: cpu_ns(i) for n, i in ids.items()}, time.monotonic()
    time.sleep(seconds)
    after, elapsed = {n: cpu_ns(i) for n, i in ids.items()}, time.monotonic() - started
    memory = {}
    for line in run(
        "docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", *names
    ).stdout.splitlines():
        name, usage = line.split(" ", 1)
        value, unit = usage.split("/")[0].strip()[:-3], usage.split("/")[0].strip()[-3:]
        memory[name] = float(value) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[unit]
    containers = {
        n.removeprefix(stack.container("")): {
            "cpu_pct_of_machine": round(100 * (after[n] - before[n]) / 1e9 / elapsed / CORES, 3),
            "mem_mib": round(memory[n], 1),
        }
        for n in names
        if before[n] is not None and after[n] is not None
    }
    return {
        "containers": containers,
        "stack_cpu_pct_of_machine": round(sum(c["cpu_pct_of_machine"] for c in containers.values()), 3),
        "stack_mem_mib": round(sum(c["mem_mib"] for c in containers.values()), 1),
    }


def pgbench(stack: Stack, seconds: int) -> dict[str, Any]:
    """PostgreSQL commit rate: one-row transactions, and 100-row batches (rows/s)."""
    exec_pg = ("docker", "exec", "-u", "postgres", stack.container("billing-db"))
    run(*exec_pg, "createdb", "pgbench_scratch")
    try:
        run(
            *exec_pg,
            "psql",
            "-q",
            "-d",
            "pgbench_scratch",
            "-c",
            "CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, user_id int, n int, "
            "amount numeric(12,2), message_id uuid UNIQUE, created_at timestamptz DEFAULT now())",
        )
        scripts = {
            "single": "INSERT INTO t (user_id, n, amount, message_id) VALUES (1, 1, 1.00, gen_random_uuid());",
            "batch100": "INSERT INTO t (user_id, n, amount, message_id) "
            "SELECT 1, 1, 1.00, gen_random_uuid() FROM generate_series(1, 100);",
        }
        figures = {}
        for name, sql in scripts.items():
            stack.exec("billing-db", "sh", "-c", f"cat > /tmp/{name}.sql", input=sql + "\n")
            out = run(
                *exec_pg,
                "pgbench",
                "-n",
                "-c",
                "8",
                "-j",
                "2",
                "-T",
                str(seconds),
                "-f",
                f"/tmp/{name}.sql",
                "pgbench_scratch",
            ).stdout
            tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
            figures[name] = {"tps": tps, "rows_per_s": tps * (100 if name == "batch100" else 1)}
            log(f"  pgbench {name}: {tps:.0f} transactions/s")
        return figures
    finally:
        run(*exec_pg, "dropdb", "pgbench_scratch", check=False)


def order_count(stack: Stack, after_id: int = 0) -> int:
    return int(stack.psql("billing-db", f"SELECT count(*) FROM orders WHERE id > {after_id:d}"))  # noqa: S608


def drain(stack: Stack, backlog: int) -> dict[str, Any]:
    """billing-app stopped, backlog published, billing-app started: orders stored per second.

    The rate comes from the orders' own ``created_at`` (the start of the transaction that stored each
    batch), not from polling: a 20k backlog drains in about a second, the polling interval's order.
    Between the first batch's start and the last batch's start, every order but the last batch's was
    stored."""
    run("docker", "stop", stack.container("billing-app"))
    purge(stack)
    last_id = int(stack.psql("billing-db", "SELECT coalesce(max(id), 0) FROM orders"))
    published = python_in(stack, "api-gateway-app", PUBLISH, str(backlog), "8")
    wait_for(lambda: stack.queue_depth("billing_queue") >= backlog, 60, what="backlog in the queue")
    started = time.monotonic()
    run("docker", "start", stack.container("billing-app"))
    wait_for(lambda: order_count(stack, last_id) >= backlog, 600, interval=1.0, what="the backlog stored")
    stack.wait_healthy("billing-app")
    stored, span, last_batch = stack.psql(
        "billing-db",
        f"WITH new AS (SELECT created_at FROM orders WHERE id > {last_id:d}) "  # noqa: S608 - an integer
        "SELECT count(*), extract(epoch FROM max(created_at) - min(created_at)), "
        "(SELECT count(*) FROM new WHERE created_at = (SELECT max(created_at) FROM new)) FROM new",
    ).split("|")
    return {
        "backlog": backlog,
        "stored": int(stored),
        "publish_rate": published["messages"] / published["seconds"],
        "orders_per_s": (int(stored) - int(last_batch)) / float(span),
        "seconds_including_start": time.monotonic() - started,
    }


def median_of(runs: int, key: str, measure: Any) -> dict[str, Any]:
    """The run whose ``key`` is the median of ``runs`` runs, with every run's figure under ``runs``."""
    results = sorted((measure() for _ in range(runs)), key=lambda r: r[key])
    return {**results[len(results) // 2], "runs": [round(r[key]) for r in results]}


def billing_batch_size() -> int:
    """billing-app's default batch (its prefetch is twice that), read from its source."""
    source = (Path(__file__).resolve().parent.parent / "apps/billing_app/consumer.py").read_text()
    return int(re.search(r"^DEFAULT_BATCH_SIZE = (\d+)$", source, re.MULTILINE).group(1))


def consume_ceiling(stack: Stack, backlog: int, prefetch: int, batch: int) -> dict[str, Any]:
    run("docker", "stop", stack.container("billing-app"))
    try:
        purge(stack)
        python_in(stack, "api-gateway-app", PUBLISH, str(backlog), "8")
        wait_for(lambda: stack.queue_depth("billing_queue") >= backlog, 60, what="backlog in the queue")
        # The no-op consumer runs in the billing-app image, with billing-app's own credentials.
        env = run(
            "docker", "inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", stack.container("billing-app")
        ).stdout.split()
        args = ["docker", "run", "--rm", "--network", f"{PROJECT}_backend", "--entrypoint", "python"]
        for item in env:
            if item.startswith("RABBITMQ_"):
                args += ["-e", item]
        out = run(*args, f"{PROJECT}/billing-app", "-c", CONSUME_NOOP, str(backlog), str(prefetch), str(batch)).stdout
        figures = json.loads(out.strip().splitlines()[-1])
        return {"messages_per_s": figures["messages"] / figures["seconds"]}
    finally:
        purge(stack)
        run("docker", "start", stack.container("billing-app"))
        stack.wait_healthy("billing-app")


def publish_ceiling(stack: Stack, count: int) -> dict[str, Any]:
    run("docker", "stop", stack.container("billing-app"))
    try:
        sequential = python_in(stack, "api-gateway-app", PUBLISH, str(count), "1")
        parallel = python_in(stack, "api-gateway-app", PUBLISH, str(count * 4), "8")
    finally:
        purge(stack)
        run("docker", "start", stack.container("billing-app"))
        stack.wait_healthy("billing-app")
    return {
        "sequential_per_s": sequential["messages"] / sequential["seconds"],
        "parallel8_per_s": parallel["messages"] / parallel["seconds"],
    }


def image_sizes() -> dict[str, float]:
    sizes = {}
    for service in SERVICES:
        size = run("docker", "image", "inspect", "-f", "{{.Size}}", f"{PROJECT}/{service}").stdout.strip()
        sizes[service] = int(size) / 1e6
    sizes["debian:bookworm-slim"] = (
        int(run("docker", "image", "inspect", "-f", "{{.Size}}", "debian:bookworm-slim").stdout.strip()) / 1e6
    )
    return sizes


# --- the run -------------------------------------------------------------------------------------------


def ratio(value: float, reference: float) -> float | None:
    return round(value / reference, 3) if reference else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=20, help="seconds per wrk run (default 20)")
    parser.add_argument("--skip-cold-build", action="store_true", help="do not rebuild the images without cache")
    parser.add_argument("--keep", action="store_true", help="leave the bench stack running")
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pwc-bench-"))
    stack = Stack(workdir / "bench.env", make_env_file(workdir / "bench.env"))
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cores": CORES, "duration_s": options.duration},
    }
    stack.compose("down", "--volumes", "--remove-orphans", check=False)
    try:
        if not options.skip_cold_build:
            log("building the six images without cache")
            started = time.monotonic()
            stack.compose("build", "--no-cache")
            results["cold_build_s"] = time.monotonic() - started
        else:
            stack.compose("build")
        log("starting the bench stack")
        started = time.monotonic()
        stack.compose("up", "--detach", "--wait", "--wait-timeout", "300")
        results["cold_up_to_healthy_s"] = time.monotonic() - started
        results["image_size_mb"] = image_sizes()
        log("measuring idle CPU and memory (60 s)")
        time.sleep(10)
        results["idle"] = idle(stack, 60)

        log("seeding 10k movies")
        stack.psql(
            "inventory-db",
            "INSERT INTO movies (title, description) SELECT 'Movie ' || i, "
            "'Description of movie ' || i FROM generate_series(1, 10000) AS i",
        )
        low, high = map(int, stack.psql("inventory-db", "SELECT min(id), max(id) FROM movies").split("|"))
        scripts = workdir
        (scripts / "movie.lua").write_text(
            f'request = function() return wrk.format("GET", "/api/movies/" .. math.random({low}, {high})) end\n'
        )
        (scripts / "search.lua").write_text(
            'request = function() return wrk.format("GET", "/api/movies?title=movie%20" .. math.random(100, 999)) end\n'
        )
        (scripts / "billing.lua").write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            'wrk.body = \'{"user_id": 7, "number_of_items": 2, "total_amount": "19.90"}\'\n'
        )

        inventory = f"http://{ip_of(stack, stack.container('inventory-app'))}:8080"
        hello_name = f"{PROJECT}-hello"
        run("docker", "rm", "-f", hello_name, check=False)
        run(
            "docker",
            "run",
            "-d",
            "--name",
            hello_name,
            "--network",
            f"{PROJECT}_backend",
            "--entrypoint",
            "python",
            f"{PROJECT}/inventory-app",
            "-c",
            HELLO,
        )
        hello = f"http://{ip_of(stack, hello_name)}:8080/"
        load = Wrk(stack, options.duration, scripts, (hello_name,))
        last_order = int(stack.psql("billing-db", "SELECT coalesce(max(id), 0) FROM orders"))
        time.sleep(2)
        http: dict[str, Any] = {}
        try:
            for c in (16, 64):
                log(f"HTTP at concurrency {c}")
                http[f"c{c}"] = {
                    "hello_waitress": load.wrk(hello, c),
                    "movie_direct": load.wrk(inventory + "/", c, "movie.lua"),
                    "movie_gateway": load.wrk("http://127.0.0.1:3000/", c, "movie.lua"),
                    "search_gateway": load.wrk("http://127.0.0.1:3000/", c, "search.lua"),
                    "billing_gateway": load.wrk("http://127.0.0.1:3000/api/billing", c, "billing.lua"),
                }
        finally:
            run("docker", "rm", "-f", hello_name, check=False)
        results["http"] = http
        wait_for(lambda: stack.queue_depth("billing_queue") == 0, 300, 1, "the billing posts to drain")
        # Every 2xx of the POST runs is an order the broker confirmed: each must be a row once the queue is
        # empty (billing-app acknowledges after the commit). A few more rows than answers is normal: wrk
        # stops with requests in flight, which the gateway still publishes.
        answered = sum(h["billing_gateway"]["requests"] - h["billing_gateway"]["errors"] for h in http.values())
        stored = order_count(stack, last_order)
        results["orders"] = {"answered_2xx": answered, "stored": stored, "lost": max(0, answered - stored)}
        log(f"  orders: {results['orders']}")

        log("reference: RabbitMQ publish with confirms")
        results["publish_ceiling"] = publish_ceiling(stack, 2000)
        log(f"  {results['publish_ceiling']}")
        log("reference: no-op consumer, same prefetch and ack batch as billing-app")
        batch = billing_batch_size()
        # A 20k backlog takes about a second either way: the median of three runs.
        results["consume_ceiling"] = median_of(
            3, "messages_per_s", lambda: consume_ceiling(stack, 20000, 2 * batch, batch)
        )
        log(f"  {results['consume_ceiling']}")
        log("reference: PostgreSQL commit rates (pgbench)")
        results["postgres"] = pgbench(stack, 10)
        log("billing-app draining a 20k backlog")
        results["drain"] = median_of(3, "orders_per_s", lambda: drain(stack, 20000))
        log(f"  {results['drain']}")
    finally:
        if not options.keep:
            stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)

    out = save_results(results)
    print(table(results))
    print(f"\nresults written to {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")


def table(r: dict[str, Any]) -> str:
    rows = ["| figure | value | physical reference | ratio |", "|---|---|---|---|"]
    for c in ("c16", "c64"):
        h = r["http"][c]
        hello = h["hello_waitress"]["rps"]
        for name, label in (
            ("movie_direct", "GET /api/movies/{id} direct to inventory-app"),
            ("movie_gateway", "GET /api/movies/{id} through the gateway"),
            ("search_gateway", "GET /api/movies?title= (10k movies) through the gateway"),
        ):
            f = h[name]
            rows.append(
                f"| {label}, {c} | {f['rps']:.0f} req/s (p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms, "
                f"{f['errors']} errors) | bare waitress hello: {hello:.0f} req/s | {ratio(f['rps'], hello)} |"
            )
        rows.append(
            f"| proxy overhead, {c} | gateway/direct throughput | 1.0 = no overhead | "
            f"{ratio(h['movie_gateway']['rps'], h['movie_direct']['rps'])} |"
        )
        b = h["billing_gateway"]
        rows.append(
            f"| POST /api/billing (confirmed), {c} | {b['rps']:.0f} req/s (p50 {b['p50_ms']} ms, "
            f"p99 {b['p99_ms']} ms, {b['errors']} errors) | pika confirms, 8 parallel: "
            f"{r['publish_ceiling']['parallel8_per_s']:.0f}/s | "
            f"{ratio(b['rps'], r['publish_ceiling']['parallel8_per_s'])} |"
        )
    if "orders" in r:  # not in the runs before 2026-12-02
        o = r["orders"]
        rows.append(
            f"| confirmed POSTs of both runs: 2xx answers, orders stored | {o['answered_2xx']}, {o['stored']} | "
            f"lost: {o['lost']} | |"
        )
    rows.append(
        f"| pika publish with confirms, one at a time | {r['publish_ceiling']['sequential_per_s']:.0f} msg/s | | |"
    )
    d = r["drain"]
    rows.append(
        f"| drain of a {d['backlog']} backlog | {d['orders_per_s']:.0f} orders/s | no-op pika consumer: "
        f"{r['consume_ceiling']['messages_per_s']:.0f} msg/s | "
        f"{ratio(d['orders_per_s'], r['consume_ceiling']['messages_per_s'])} |"
    )
    pg = r["postgres"]
    rows.append(f"| PostgreSQL one-row commits (pgbench, 8 clients) | {pg['single']['tps']:.0f} commits/s | | |")
    rows.append(
        f"| PostgreSQL 100-row batch inserts (pgbench, 8 clients) | {pg['batch100']['rows_per_s']:.0f} rows/s | | |"
    )
    if "cold_build_s" in r:
        rows.append(f"| build of the six images, empty cache | {r['cold_build_s']:.0f} s | | |")
    rows.append(f"| cold `up` to all healthy (images built) | {r['cold_up_to_healthy_s']:.0f} s | | |")
    idle = r["idle"]
    rows.append(
        f"| idle CPU of the whole stack | {idle['stack_cpu_pct_of_machine']:.2f} % of the machine | target ≤ 3 % | |"
    )
    rows.append(f"| idle memory of the whole stack | {idle['stack_mem_mib']:.0f} MiB | | |")
    for name, c in idle["containers"].items():
        rows.append(f"| idle {name} | {c['cpu_pct_of_machine']:.2f} % CPU, {c['mem_mib']:.0f} MiB | | |")
    for name, size in r["image_size_mb"].items():
        rows.append(f"| image {name} | {size:.0f} MB | | |")
    return "\n".join(rows) + "\n\n" + cpu_table(r["http"])


def cpu_table(http: dict[str, Any]) -> str:
    """CPU microseconds per request of each busy container, per HTTP run (where cgroups could be read)."""
    runs = [
        ("hello_waitress", "bare waitress hello"),
        ("movie_direct", "GET /api/movies/{id} direct"),
        ("movie_gateway", "GET /api/movies/{id} via gateway"),
        ("search_gateway", "GET ?title= via gateway"),
        ("billing_gateway", "POST /api/billing"),
    ]
    columns = ["api-gateway-app", "inventory-app", "inventory-db", "rabbit-queue", "billing-app", "billing-db"]
    lines = []
    for c, h in http.items():
        if not any(h[name].get("cpu_us_per_request") for name, _ in runs):
            continue
        lines.append(f"CPU per request in µs ({c}; the hello app is its own container):\n")
        lines.append("| run | " + " | ".join(columns) + " | hello |")
        lines.append("|---" * (len(columns) + 2) + "|")
        for name, label in runs:
            cpu = h[name].get("cpu_us_per_request", {})
            hello = next((v for k, v in cpu.items() if k.endswith("hello")), "")
            lines.append(f"| {label} | " + " | ".join(str(cpu.get(col, "")) for col in columns) + f" | {hello} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
