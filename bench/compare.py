"""Before/after in one run: the same workloads on the stack built from another git revision and on this
tree, alternately (before, after, before, after...), so that a slow moment of the machine hits both.

For each round and tree: CPU microseconds per request of each container (cgroup accounting) and req/s for
GET /api/movies/{id} through the gateway and straight to inventory-app and for the confirmed POST
/api/billing (wrk, c16); then the idle CPU of the stack from cgroup CPU time over a minute (healthchecks
included) and its memory. With --monitoring the current tree also runs its Prometheus (profile
`monitoring`, scraping every target every 15 s) during its rounds, and its idle figures include it.

    bench/run.sh is the full benchmark; this is for one change:  python3 bench/compare.py --before <rev>
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import CORES, Wrk, idle, ip_of, log, save_results

from stack import ROOT, SERVICES, Stack, make_env_file, run, wait_for

RUNS = (("movie_gateway", "GET /api/movies/{id} via the gateway"), ("movie_direct", "GET /api/movies/{id} direct"),
        ("billing_gateway", "POST /api/billing (confirmed)"))  # fmt: skip


@dataclasses.dataclass
class TreeStack(Stack):
    """The stack of the tree at ``root`` (its own compose files), under its own project and port."""

    root: Path = ROOT
    profiles: tuple[str, ...] = ()

    def compose(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        files = ("-f", str(self.root / "docker-compose.yml"), "-f", str(self.root / "tests" / "compose.test.yml"))
        profiles = [arg for p in self.profiles for arg in ("--profile", p)]
        return run(
            "docker", "compose", "-p", self.project, "--env-file", str(self.env_file), *files, *profiles, *args,
            check=check, timeout=timeout,
        )  # fmt: skip

    def containers(self) -> list[str]:
        monitoring = [self.container("prometheus")] if "monitoring" in self.profiles else []
        return [self.container(s) for s in SERVICES] + monitoring


def export_tree(revision: str, into: Path) -> Path:
    """The files of ``revision`` (as git has them), unpacked into ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def start(stack: TreeStack) -> None:
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "300")


def seed(stack: TreeStack) -> tuple[int, int]:
    if stack.psql("inventory-db", "SELECT count(*) FROM movies") == "0":
        stack.psql(
            "inventory-db",
            "INSERT INTO movies (title, description) SELECT 'Movie ' || i, 'Description of movie ' || i "
            "FROM generate_series(1, 10000) AS i",
        )
    low, high = stack.psql("inventory-db", "SELECT min(id), max(id) FROM movies").split("|")
    return int(low), int(high)


def round_of(stack: TreeStack, duration: int, scripts: Path) -> dict[str, Any]:
    low, high = seed(stack)
    (scripts / "movie.lua").write_text(
        f'request = function() return wrk.format("GET", "/api/movies/" .. math.random({low}, {high})) end\n'
    )
    (scripts / "billing.lua").write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        'wrk.body = \'{"user_id": 7, "number_of_items": 2, "total_amount": "19.90"}\'\n'
    )
    load = Wrk(stack, duration, scripts)
    inventory = f"http://{ip_of(stack, stack.container('inventory-app'))}:8080/"
    figures = {
        "movie_gateway": load.wrk("http://127.0.0.1:3000/", 16, "movie.lua"),
        "movie_direct": load.wrk(inventory, 16, "movie.lua"),
        "billing_gateway": load.wrk("http://127.0.0.1:3000/api/billing", 16, "billing.lua"),
    }
    wait_for(lambda: stack.queue_depth("billing_queue") == 0, 300, 1, "the billing posts to drain")
    return figures


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per run: the median over the rounds of req/s and of each container's CPU µs per request."""
    out: dict[str, Any] = {}
    for name, _ in RUNS:
        figures = [r[name] for r in rounds]
        containers = sorted({c for f in figures for c in f["cpu_us_per_request"]})
        cpu = {c: statistics.median(f["cpu_us_per_request"].get(c, 0) for f in figures) for c in containers}
        out[name] = {
            "rps": round(statistics.median(f["rps"] for f in figures)),
            "p99_ms": statistics.median(f["p99_ms"] for f in figures),
            "errors": sum(f["errors"] for f in figures),
            "cpu_us_per_request": cpu,
            "cpu_us_per_request_total": sum(cpu.values()),
        }
    return out


def table(result: dict[str, Any]) -> str:
    before, after = result["before"]["http"], result["after"]["http"]
    rows = [
        f"before = {result['before']['revision']}, after = this tree ({result['after']['revision']})"
        + (", Prometheus scraping during the after rounds" if result["monitoring"] else "")
        + (", one stack, only the app images swapped" if result.get("apps_only") else "")
        + f"; median of {result['rounds']} alternating rounds, wrk c16, {result['duration_s']} s each.",
        "",
        "| run | req/s before → after | CPU µs/request (all containers) before → after | ratio | after, each |",
        "|---|---|---|---|---|",
    ]
    for name, label in RUNS:
        b, a = before[name], after[name]
        ratio = a["cpu_us_per_request_total"] / b["cpu_us_per_request_total"] if b["cpu_us_per_request_total"] else 0
        detail = ", ".join(f"{c} {v:.0f}" for c, v in a["cpu_us_per_request"].items() if v)
        rows.append(
            f"| {label} | {b['rps']} → {a['rps']} | {b['cpu_us_per_request_total']:.0f} → "
            f"{a['cpu_us_per_request_total']:.0f} | {ratio:.3f} | {detail} |"
        )
    rows += ["", "| idle (cgroup CPU over 60 s) | CPU % of the machine | memory MiB |", "|---|---|---|"]
    for side in ("before", "after"):
        i = result[side]["idle"]
        rows.append(f"| {side}: whole stack | {i['stack_cpu_pct_of_machine']:.2f} | {i['stack_mem_mib']:.0f} |")
        for c, v in i["containers"].items():
            rows.append(f"| {side}: {c} | {v['cpu_pct_of_machine']:.2f} | {v['mem_mib']:.0f} |")
    return "\n".join(rows)


def build_all(stacks: dict[str, Any]) -> None:
    """Each side's stack removed with its volumes (a left-over of an interrupted run) and its images built."""
    for side, stack in stacks.items():
        stack.compose("down", "--volumes", "--remove-orphans", check=False)
        log(f"building {side}")
        stack.compose("build")


APPS = SERVICES[3:]  # inventory-app, billing-app, api-gateway-app


def swap_apps(stack: TreeStack, image_of: dict[str, str]) -> None:
    """The stack's app images pointed at ``image_of`` (service -> image), then the stack brought up: compose
    recreates the containers whose image changed, the databases and the broker keep running."""
    for service, image in image_of.items():
        run("docker", "tag", image, f"{stack.env['TEST_PREFIX']}/{service}")
    start(stack)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision to compare this tree with")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per tree (default 3)")
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run (default 15)")
    parser.add_argument("--monitoring", action="store_true", help="run this tree's Prometheus during its rounds")
    parser.add_argument(
        "--apps-only",
        action="store_true",
        help="one stack (this tree's), only the three app images swapped between rounds: for a change to the apps, "
        "without the variance of a second set of databases and broker",
    )
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pwc-compare-"))
    before_root = export_tree(options.before, Path(tempfile.mkdtemp(prefix="pwc-before-")))
    revision = run("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD").stdout.strip()
    stacks = {
        "before": TreeStack(workdir / "a.env", make_env_file(workdir / "a.env", "pwc-cmp-a", 3510), "pwc-cmp-a", 3510,
                            root=before_root),
        "after": TreeStack(workdir / "b.env", make_env_file(workdir / "b.env", "pwc-cmp-b", 3520), "pwc-cmp-b", 3520,
                           profiles=("monitoring",) if options.monitoring else ()),
    }  # fmt: skip
    rounds: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cores": CORES,
        "rounds": options.rounds,
        "duration_s": options.duration,
        "monitoring": options.monitoring,
        "apps_only": options.apps_only,
    }
    # With --apps-only each side's app images, kept under a tag of their own while the stack's names are swapped.
    saved = {side: {a: f"{stacks[side].env['TEST_PREFIX']}/{a}:{side}" for a in APPS} for side in stacks}
    try:
        build_all(stacks)
        if options.apps_only:
            for side, stack in stacks.items():
                for app, tag in saved[side].items():
                    run("docker", "tag", f"{stack.env['TEST_PREFIX']}/{app}", tag)
        for n in range(options.rounds):
            for side, stack in stacks.items():
                log(f"round {n + 1}: {side}")
                if options.apps_only:
                    stack = stacks["after"]
                    swap_apps(stack, saved[side])
                else:
                    start(stack)
                if n == 0:
                    time.sleep(10)  # past the start-up work
                    result[side] = {"revision": options.before if side == "before" else revision}
                    result[side]["idle"] = idle(stack, 60, stack.containers())
                    log(f"  idle: {result[side]['idle']['stack_cpu_pct_of_machine']} % CPU")
                rounds[side].append(round_of(stack, options.duration, workdir))
                if not options.apps_only:
                    stack.compose("stop", "--timeout", "30")
    finally:
        for stack in stacks.values():
            stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)
        if options.apps_only:
            run("docker", "image", "rm", *(tag for tags in saved.values() for tag in tags.values()), check=False)
        shutil.rmtree(before_root, ignore_errors=True)
    for side in stacks:
        result[side]["http"] = summary(rounds[side])
    out = save_results(result, "-compare")
    print(table(result))
    print(f"\nresults written to {out}")


if __name__ == "__main__":
    main()
