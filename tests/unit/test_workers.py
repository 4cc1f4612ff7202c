"""How many HTTP worker processes an app container runs (common/workers.py): HTTP_WORKERS, or by default
half the CPUs the container may use, from its cgroup's quota (v1 and v2 files) and its CPU affinity."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import workers
from stack import ROOT


def cgroup(tmp_path: Path, files: dict[str, str]) -> str:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content + "\n")
    return str(tmp_path)


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "max 100000"}, None),
        ({"cpu.max": "150000 100000"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"}, 2.0),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "50000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 0.5),
        ({}, None),
    ],
)
def test_the_cpu_quota_is_read_from_cgroup_v2_or_v1(tmp_path: Path, files: dict[str, str], limit: float | None) -> None:
    assert workers.cgroup_cpu_limit(cgroup(tmp_path, files)) == limit


def test_the_cpus_a_container_may_use_are_its_affinity_bounded_by_its_quota_rounded_up(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert workers.container_cpus(cgroup(tmp_path / "none", {"cpu.max": "max 100000"})) == affinity
    assert workers.container_cpus(cgroup(tmp_path / "half", {"cpu.max": "50000 100000"})) == 1
    assert workers.container_cpus(cgroup(tmp_path / "many", {"cpu.max": "6400000 100000"})) == affinity


@pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (2, 1), (3, 1), (4, 2), (6, 3), (8, 4), (64, 4)])
def test_by_default_half_the_cpus_at_least_one_at_most_four(cpus: int, expected: int) -> None:
    assert workers.resolve(None, cpus) == expected
    assert workers.resolve("auto", cpus) == expected


def test_a_number_is_taken_as_it_is_and_anything_else_is_an_error_naming_the_variable() -> None:
    assert workers.resolve("3", 1) == 3
    assert workers.resolve("16", 64) == 16
    for bad in ("0", "17", "two", "-1", "1.5"):
        with pytest.raises(ValueError, match=rf"HTTP_WORKERS='{bad}' is not 'auto' or an integer in \[1, 16\]"):
            workers.resolve(bad, 2)


def run_workers(value: str, *command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "apps"), "HTTP_WORKERS": value}
    return subprocess.run(
        [sys.executable, "-m", "common.workers", *command], env=env, capture_output=True, text=True, timeout=30
    )


def test_the_command_runs_with_the_number_in_its_environment_or_not_at_all() -> None:
    shown = run_workers("3", "sh", "-c", 'echo "$HTTP_WORKERS"')
    assert (shown.returncode, shown.stdout) == (0, "3\n")
    auto = run_workers("auto", "sh", "-c", 'echo "$HTTP_WORKERS"')
    assert auto.stdout == f"{workers.resolve('auto', workers.container_cpus())}\n"
    refused = run_workers("lots", "sh", "-c", "echo started")
    assert refused.returncode != 0 and "started" not in refused.stdout
    assert refused.stderr.strip() == "error: HTTP_WORKERS='lots' is not 'auto' or an integer in [1, 16]"
