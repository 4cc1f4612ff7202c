"""How many HTTP worker processes an app container runs, decided once, before supervisord starts.

The app images start ``python -m common.workers supervisord-lean -c ...``: ``HTTP_WORKERS`` is ``auto`` (the
images' default) or a number in [1, MAX_WORKERS]; ``auto`` becomes half the CPUs the container may use (its
CPU affinity, and its cgroup's CPU quota when it has one), at least 1 and at most AUTO_MAX. Half, because a
request through the gateway costs the gateway and the app behind it about the same CPU (bench/README.md), so
each can keep about half of the CPUs busy. At most AUTO_MAX, because each worker holds up to ``HTTP_THREADS``
connections to its database, which allows 50. The command is then executed with ``HTTP_WORKERS`` set to the
number, which supervisor's ``numprocs`` reads; an invalid value is one error naming it, and nothing starts.
"""

from __future__ import annotations

import math
import os
import sys

MAX_WORKERS = 16
AUTO_MAX = 4


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by the cgroup's quota (``docker run --cpus``), or None without a quota."""
    v2 = _read(os.path.join(root, "cpu.max"))  # "max 100000" or "150000 100000"
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100000)
    for directory in ("cpu", "cpu,cpuacct"):
        quota = _read(os.path.join(root, directory, "cpu.cfs_quota_us"))
        period = _read(os.path.join(root, directory, "cpu.cfs_period_us"))
        if quota is not None and period is not None:
            return None if int(quota) < 0 else int(quota) / int(period)
    return None


def container_cpus(root: str = "/sys/fs/cgroup") -> int:
    """The CPUs this container may use: its affinity, bounded by its CPU quota (rounded up)."""
    cpus = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return cpus


def resolve(value: str | None, cpus: int) -> int:
    """The number of workers for ``HTTP_WORKERS=value``; ValueError (naming it) if it is not valid."""
    if value is None or value.strip() in ("", "auto"):
        return min(AUTO_MAX, max(1, cpus // 2))
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_WORKERS:
        raise ValueError(f"HTTP_WORKERS={value!r} is not 'auto' or an integer in [1, {MAX_WORKERS}]")
    return number


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m common.workers COMMAND [ARG...]")
    try:
        workers = resolve(os.environ.get("HTTP_WORKERS"), container_cpus())
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    os.environ["HTTP_WORKERS"] = str(workers)
    os.execvp(argv[0], argv)  # noqa: S606 - the image's own command line


if __name__ == "__main__":
    main(sys.argv[1:])
