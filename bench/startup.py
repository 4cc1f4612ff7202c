"""Start-up of the stack, images built: from `docker compose up -d` to each container healthy and to the first
200 on GET /api/movies through the gateway, with a timeline per container; optionally its idle CPU and memory.

Each round starts the stack twice: on fresh volumes (`down -v` first, so the databases are initialised) and
on the volumes the first start left (`down`, then `up -d`: every container is created anew, the data is kept,
as after `docker compose down` or an upgrade). With --before REV the stack of that git revision runs too,
alternately with this tree (before, after, before, after...), so that a slow moment of a shared machine hits
both; the summary gives the median and the spread (min-max) of every figure.

Timeline of each container, in seconds from the `up` command: `started` (Docker's start event),
`supervisord` (its "started" line), what its programs log when they are ready (`ready`: PostgreSQL's last
"ready to accept connections", after db-bootstrap.sh's socket-only maintenance server; RabbitMQ's "Server
startup complete"; the apps' "listening on port"; `pruned`: broker-bootstrap.sh prune-users done), and
`healthy` (Docker's first health_status: healthy event). `cpu_s` is the CPU time the container used until the
whole stack was healthy (cgroup accounting).

    python3 bench/startup.py --runs 5 --before HEAD        # this tree against the last commit
    python3 bench/startup.py --runs 3 --idle               # plus idle CPU (cgroups, 60 s) and memory

Own compose projects and ports (pwc-h4 on 3540, pwc-h4a on 3541 for --before; --prefix to change): never a
user's stack. Both stacks are removed with their volumes at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import CORES, cpu_ns, idle, log, save_results
from compare import TreeStack, build_all, export_tree

from stack import ROOT, SERVICES, make_env_file, run

# What a program logs once it is ready (the last match counts: PostgreSQL's first "ready" line is the
# bootstrap's socket-only temporary server).
READY = {
    "inventory-db": r"database system is ready to accept connections",
    "billing-db": r"database system is ready to accept connections",
    "rabbit-queue": r"Server startup complete",
    "inventory-app": r"listening on port 8080",
    "billing-app": r"listening on port 8080",
    "api-gateway-app": r"listening on port 3000",
}
# Other milestones worth a column: (name, service, pattern); the first match counts.
EXTRA = (
    ("bootstrap_done", "inventory-db", r"db-bootstrap: (maintenance|initialisation) complete"),
    ("bootstrap_done", "billing-db", r"db-bootstrap: (maintenance|initialisation) complete"),
    ("pruned", "rabbit-queue", r"broker-bootstrap: broker users:"),
    ("consuming", "billing-app", r"consuming '"),
    ("publishing", "api-gateway-app", r"publishing to exchange"),
)
MILESTONES = ("started", "supervisord", "bootstrap_done", "ready", "pruned", "consuming", "publishing", "healthy")


def parse_time(stamp: str) -> float:
    """An RFC 3339 time with nanoseconds (Docker's) as a Unix time."""
    stamp = re.sub(r"(\.\d{6})\d*", r"\1", stamp.replace("Z", "+00:00"))
    return dt.datetime.fromisoformat(stamp).timestamp()


class Events:
    """`docker events` of one compose project, read in a thread while the stack starts."""

    def __init__(self, project: str) -> None:
        self.seen: list[dict[str, Any]] = []
        self._process = subprocess.Popen(
            ["docker", "events", "--format", "{{json .}}", "--filter", "type=container",
             "--filter", f"label=com.docker.compose.project={project}"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            with contextlib.suppress(ValueError):
                self.seen.append(json.loads(line))

    def first(self, container: str, status: str) -> float | None:
        for event in list(self.seen):
            if event.get("Actor", {}).get("Attributes", {}).get("name") == container and event["status"] == status:
                return event["timeNano"] / 1e9
        return None

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(10)


def first_200(port: int, deadline: float) -> float | None:
    """The time of the first 200 on GET /api/movies, polled every 50 ms."""
    while time.time() < deadline:
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/movies?limit=1", timeout=1) as answer:
                if answer.status == 200:
                    return time.time()
        time.sleep(0.05)
    return None


def log_times(container: str) -> list[tuple[float, str]]:
    out = run("docker", "logs", "--timestamps", container, check=False)
    lines = []
    for line in (out.stdout + out.stderr).splitlines():
        stamp, _, text = line.partition(" ")
        with contextlib.suppress(ValueError):
            lines.append((parse_time(stamp), text))
    return sorted(lines)


def timeline(stack: TreeStack, events: Events, t0: float) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for service in SERVICES:
        name = stack.container(service)
        lines = log_times(name)

        def first(pattern: str, lines: list[tuple[float, str]] = lines) -> float | None:
            return next((t for t, text in lines if re.search(pattern, text)), None)

        def last(pattern: str, lines: list[tuple[float, str]] = lines) -> float | None:
            return next((t for t, text in reversed(lines) if re.search(pattern, text)), None)

        marks: dict[str, float | None] = {
            "started": events.first(name, "start"),
            "supervisord": first(r"supervisord started with pid"),
            "ready": last(READY[service]),
            "healthy": events.first(name, "health_status: healthy"),
        }
        for milestone, owner, pattern in EXTRA:
            if owner == service:
                marks[milestone] = first(pattern)
        out[service] = {k: (round(v - t0, 2) if v is not None else None) for k, v in marks.items()}
    return out


def start_once(stack: TreeStack, timeout: float = 240) -> dict[str, Any]:
    """`up -d` on a stopped (removed) stack; returns when all six are healthy."""
    events = Events(stack.project)
    time.sleep(0.5)  # `docker events` is listening
    t0 = time.time()
    up = subprocess.Popen(
        ["docker", "compose", "-p", stack.project, "--env-file", str(stack.env_file),
         "-f", str(stack.root / "docker-compose.yml"), "-f", str(stack.root / "tests" / "compose.test.yml"),
         "up", "--detach"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        answered = first_200(stack.port, t0 + timeout)
        up_stderr = up.communicate(timeout=timeout)[1]
        up_done = time.time()
        if up.returncode != 0:
            raise AssertionError(f"compose up failed:\n{up_stderr}")
        deadline = t0 + timeout
        names = [stack.container(s) for s in SERVICES]
        while any(events.first(n, "health_status: healthy") is None for n in names):
            if time.time() > deadline:
                raise AssertionError(f"not all healthy after {timeout} s")
            time.sleep(0.1)
        all_healthy = max(events.first(n, "health_status: healthy") or 0 for n in names)
        ids = run("docker", "inspect", "-f", "{{.Id}}", *names).stdout.split()
        cpu = {s: cpu_ns(i) for s, i in zip(SERVICES, ids, strict=True)}
        time.sleep(0.5)
        marks = timeline(stack, events, t0)
    finally:
        events.close()
    for service in SERVICES:
        marks[service]["cpu_s"] = round(cpu[service] / 1e9, 2) if cpu[service] is not None else None
    return {
        "all_healthy_s": round(all_healthy - t0, 2),
        "first_200_s": round(answered - t0, 2) if answered else None,
        "compose_up_returned_s": round(up_done - t0, 2),
        "containers": marks,
    }


def processes(stack: TreeStack) -> dict[str, list[tuple[int, str]]]:
    """RSS (KiB) and command line of every process of each container (`docker top`, i.e. the host's ps)."""
    out = {}
    for service in SERVICES:
        top = run("docker", "top", stack.container(service), "-eo", "rss,args", check=False).stdout.splitlines()[1:]
        rows = []
        for line in top:
            rss, _, args = line.strip().partition(" ")
            rows.append((int(rss), args.strip()[:120]))
        out[service] = sorted(rows, reverse=True)
    return out


def spread(values: list[float | None], digits: int = 1) -> str:
    """The median and, for several values, their range: "8.2 (7.9-9.4)"."""
    got = [v for v in values if v is not None]
    if not got:
        return "-"
    if len(got) == 1:
        return f"{got[0]:.{digits}f}"
    return f"{statistics.median(got):.{digits}f} ({min(got):.{digits}f}-{max(got):.{digits}f})"


def summary_table(result: dict[str, Any]) -> str:
    lines = []
    for variant in ("fresh", "existing"):
        sides = [s for s in result["sides"] if result["runs"][s].get(variant)]
        if not sides:
            continue
        lines += [f"\n### {variant} volumes: median (min-max) over {result['rounds']} runs, seconds from `up -d`\n"]
        lines += ["| figure | " + " | ".join(sides) + " |", "|---" * (len(sides) + 1) + "|"]
        for key, label in (("all_healthy_s", "all six healthy"), ("first_200_s", "first 200 on GET /api/movies"),
                           ("compose_up_returned_s", "`up -d` returned")):  # fmt: skip
            lines.append(f"| {label} | " + " | ".join(
                spread([r[key] for r in result["runs"][s][variant]]) for s in sides) + " |")  # fmt: skip
        for side in sides:
            runs = result["runs"][side][variant]
            lines += [f"\n{side}, {variant}: timeline per container (s)\n"]
            lines += ["| container | " + " | ".join(MILESTONES) + " | cpu_s |", "|---" * (len(MILESTONES) + 2) + "|"]
            for service in SERVICES:
                cells = [spread([r["containers"][service].get(m) for r in runs]) if any(
                    r["containers"][service].get(m) is not None for r in runs) else "" for m in MILESTONES]  # fmt: skip
                cells.append(spread([r["containers"][service].get("cpu_s") for r in runs]))
                lines.append(f"| {service} | " + " | ".join(cells) + " |")
    if any(result["idle"].values()):
        lines += ["\n### idle (cgroup CPU over 60 s, from 10 s after healthy; docker stats memory)\n"]
        lines += ["| container | " + " | ".join(f"{s} CPU % | {s} MiB" for s in result["sides"]) + " |",
                  "|---" * (2 * len(result["sides"]) + 1) + "|"]  # fmt: skip
        for name in ("stack", *SERVICES):
            cells = []
            for side in result["sides"]:
                samples = result["idle"][side]
                if name == "stack":
                    cpu = [i["stack_cpu_pct_of_machine"] for i in samples]
                    mem = [i["stack_mem_mib"] for i in samples]
                else:
                    cpu = [i["containers"][name]["cpu_pct_of_machine"] for i in samples]
                    mem = [i["containers"][name]["mem_mib"] for i in samples]
                cells += [spread(cpu, 2), spread(mem, 0)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="git revision to alternate with this tree")
    parser.add_argument("--runs", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--idle", action="store_true", help="also measure idle CPU and memory after each round")
    parser.add_argument("--no-existing", action="store_true", help="fresh volumes only")
    parser.add_argument("--prefix", default="pwc-h4", help="compose project of this tree (default pwc-h4)")
    parser.add_argument("--port", type=int, default=3540, help="its gateway port (default 3540; --before: +1)")
    parser.add_argument("--keep", action="store_true", help="leave this tree's stack running at the end")
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pwc-startup-"))
    stacks: dict[str, TreeStack] = {}
    before_root = None
    if options.before:
        before_root = export_tree(options.before, Path(tempfile.mkdtemp(prefix="pwc-startup-before-")))
        project, port = options.prefix + "a", options.port + 1
        env = make_env_file(workdir / "before.env", project, port, port + 50)
        stacks["before"] = TreeStack(workdir / "before.env", env, project, port, root=before_root)
    env = make_env_file(workdir / "after.env", options.prefix, options.port, options.port + 50)
    stacks["after"] = TreeStack(workdir / "after.env", env, options.prefix, options.port)
    revision = run("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD").stdout.strip()
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cores": CORES,
        "rounds": options.runs,
        "sides": list(stacks),
        "revisions": {"before": options.before, "after": f"{revision} + working tree"},
        "runs": {side: {"fresh": [], "existing": []} for side in stacks},
        "idle": {side: [] for side in stacks},
        "processes": {},
    }
    try:
        build_all(stacks)
        for n in range(options.runs):
            for side, stack in stacks.items():
                stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)
                fresh = start_once(stack)
                result["runs"][side]["fresh"].append(fresh)
                log(f"round {n + 1} {side} fresh: healthy {fresh['all_healthy_s']} s, "
                    f"first 200 {fresh['first_200_s']} s")  # fmt: skip
                if not options.no_existing:
                    stack.compose("down", "--timeout", "30")
                    existing = start_once(stack)
                    result["runs"][side]["existing"].append(existing)
                    log(f"round {n + 1} {side} existing: healthy {existing['all_healthy_s']} s, "
                        f"first 200 {existing['first_200_s']} s")  # fmt: skip
                if options.idle:
                    time.sleep(10)
                    figures = idle(stack, 60)
                    result["idle"][side].append(figures)
                    result["processes"][side] = processes(stack)
                    log(f"  idle: {figures['stack_cpu_pct_of_machine']} % CPU, {figures['stack_mem_mib']} MiB")
                if not (options.keep and side == "after" and n == options.runs - 1):
                    stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)
    finally:
        for side, stack in stacks.items():
            if not (options.keep and side == "after"):
                stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)
        if before_root:
            shutil.rmtree(before_root, ignore_errors=True)
    out = save_results(result, "-startup")
    print(summary_table(result))
    print(f"\nresults written to {out}")


if __name__ == "__main__":
    main()
