"""HTTP worker processes per app (HTTP_WORKERS) against the CPUs the apps' containers may use (`docker update
--cpus`), on one scratch stack of this tree: for each worker count (1, 2) and CPU limit (1, 2), GET
/api/movies/{id} straight to inventory-app and through the gateway (wrk c16), req/s and CPU µs per request of
each container from cgroups, alternating the configurations over the rounds; then each worker count's idle
memory. The limit applies to inventory-app, billing-app and api-gateway-app; the databases, the broker and wrk
itself are not limited and share the machine's cores with them.

    python3 bench/workers.py [--rounds 2] [--duration 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import Wrk, idle, ip_of, log, save_results
from compare import TreeStack, seed

from stack import make_env_file, run

PROJECT, PORT, PROMETHEUS_PORT = "pwc-bench-workers", 3600, 9690
APPS = ("inventory-app", "billing-app", "api-gateway-app")
WORKERS, CPUS = (1, 2), (1, 2)


def with_workers(stack: TreeStack, workers: int) -> None:
    """(Re)create the apps with HTTP_WORKERS=workers; the databases and the broker keep running."""
    lines = [line for line in stack.env_file.read_text().splitlines() if not line.startswith("HTTP_WORKERS=")]
    stack.env_file.write_text("\n".join([*lines, f"HTTP_WORKERS={workers}"]) + "\n")
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "300")
    status = stack.exec("inventory-app", "supervisorctl", "status", check=False).stdout
    assert status.count("inventory-app:inventory-app-") == workers, status


def limit_cpus(stack: TreeStack, cpus: int) -> None:
    run("docker", "update", "--cpus", str(cpus), *(stack.container(app) for app in APPS))


def measure(stack: TreeStack, duration: int, scripts: Path) -> dict[str, Any]:
    load = Wrk(stack, duration, scripts)
    inventory = f"http://{ip_of(stack, stack.container('inventory-app'))}:8080/"
    return {
        "movie_direct": load.wrk(inventory, 16, "movie.lua"),
        "movie_gateway": load.wrk("http://127.0.0.1:3000/", 16, "movie.lua"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pwc-bench-workers-"))
    env_file = work / "bench.env"
    stack = TreeStack(env_file, make_env_file(env_file, PROJECT, PORT, PROMETHEUS_PORT), PROJECT, PORT)
    stack.compose("down", "--volumes", "--remove-orphans", check=False)
    runs: dict[str, list[dict[str, Any]]] = {}
    memory: dict[int, Any] = {}
    try:
        stack.compose("build")
        for round_number in range(args.rounds):
            for workers in WORKERS if round_number % 2 == 0 else WORKERS[::-1]:
                with_workers(stack, workers)
                low, high = seed(stack)
                (work / "movie.lua").write_text(
                    f'request = function() return wrk.format("GET", "/api/movies/" .. math.random({low}, {high})) end\n'
                )
                if round_number == 0:
                    limit_cpus(stack, max(CPUS))
                    memory[workers] = idle(stack, 20)
                for cpus in CPUS if round_number % 2 == 0 else CPUS[::-1]:
                    log(f"round {round_number + 1}: HTTP_WORKERS={workers}, --cpus {cpus}")
                    limit_cpus(stack, cpus)
                    runs.setdefault(f"workers={workers} cpus={cpus}", []).append(measure(stack, args.duration, work))
    finally:
        if not args.keep:
            stack.compose("down", "--volumes", "--remove-orphans", check=False)
    result: dict[str, Any] = {"rounds": runs, "idle": memory, "summary": {}}
    for name, rounds in runs.items():
        result["summary"][name] = {
            workload: {
                "rps": round(statistics.median(r[workload]["rps"] for r in rounds)),
                "p99_ms": statistics.median(r[workload]["p99_ms"] for r in rounds),
                "errors": sum(r[workload]["errors"] for r in rounds),
                "cpu_us_per_request": {
                    c: statistics.median(r[workload]["cpu_us_per_request"].get(c, 0) for r in rounds)
                    for c in rounds[0][workload]["cpu_us_per_request"]
                },
            }
            for workload in rounds[0]
        }
    path = save_results(result, "-workers")
    print(table(result))
    print(f"\nresults written to {path}")


def table(result: dict[str, Any]) -> str:
    lines = [
        "| HTTP_WORKERS, --cpus | direct GET req/s (p99 ms) | inventory-app µs/req | via gateway req/s (p99 ms) "
        "| gateway + inventory-app µs/req |",
        "|---|---|---|---|---|",
    ]
    for name, s in result["summary"].items():
        direct, gateway = s["movie_direct"], s["movie_gateway"]
        lines.append(
            f"| {name} | {direct['rps']} ({direct['p99_ms']}) | {direct['cpu_us_per_request']['inventory-app']:.0f} "
            f"| {gateway['rps']} ({gateway['p99_ms']}) | {gateway['cpu_us_per_request']['api-gateway-app']:.0f} + "
            f"{gateway['cpu_us_per_request']['inventory-app']:.0f} |"
        )
    for workers, figures in result["idle"].items():
        apps = {app: figures["containers"][app]["mem_mib"] for app in APPS}
        lines.append(f"\nidle, HTTP_WORKERS={workers}: stack {figures['stack_mem_mib']} MiB; {apps}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
