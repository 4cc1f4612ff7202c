"""Upgrading in place: a stack started from the last release keeps every row and every queued order when
`docker compose up --build -d` runs with the current tree, with no manual step.

The release is named in tests/upgrade-from (a commit of this repository); the upgraded stack is a
project of its own (prefix pwc-up, port 3320), never the session's test stack or a user's stack.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stack import ROOT, SERVICES, make_env_file, run, wait_for

pytestmark = pytest.mark.e2e

PROJECT = os.environ.get("PWC_UPGRADE_PREFIX", "pwc-up")
PORT = int(os.environ.get("PWC_UPGRADE_PORT", "3320"))
OUTPUT = ROOT / "tests" / "output"


MOVIES = "SELECT id, title, description FROM movies WHERE title LIKE '{tag}%' ORDER BY id"
ORDERS = (
    "SELECT id, user_id, number_of_items, total_amount, message_id, created_at FROM orders "
    "WHERE user_id = {user} ORDER BY id"
)


def order(user: int, items: int) -> dict[str, Any]:
    return {"user_id": user, "number_of_items": items, "total_amount": "3.50"}


def release() -> str:
    return (ROOT / "tests" / "upgrade-from").read_text().split()[0]


class Deployment:
    """One compose project, deployed from a given source tree."""

    def __init__(self, env_file: Path, env: dict[str, str]) -> None:
        self.env_file = env_file
        self.env = env

    def compose(self, tree: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        files = ["-f", str(tree / "docker-compose.yml"), "-f", str(tree / "tests" / "compose.test.yml")]
        return run("docker", "compose", "-p", PROJECT, "--env-file", str(self.env_file), *files, *args, check=check)

    def http(self, method: str, path: str, body: Any = None, timeout: float = 10) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{PORT}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, None

    def psql(self, service: str, sql: str) -> str:
        db = self.env["INVENTORY_DB_NAME"] if service == "inventory-db" else self.env["BILLING_DB_NAME"]
        container = f"{PROJECT}-{service}"
        return run(
            "docker", "exec", "-u", "postgres", container, "psql", "-X", "-q", "-At", "-d", db, "-c", sql
        ).stdout.strip()

    def health(self) -> dict[str, str]:
        return {
            s: run("docker", "inspect", "-f", "{{.State.Health.Status}}", f"{PROJECT}-{s}", check=False).stdout.strip()
            for s in SERVICES
        }


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("release")
    archive = tree / "release.tar"
    run("git", "-C", str(ROOT), "archive", "--output", str(archive), release())
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, old_tree: Path) -> Iterator[Deployment]:
    env_file = tmp_path_factory.mktemp("upgrade") / "upgrade.env"
    deployed = Deployment(env_file, make_env_file(env_file, prefix=PROJECT, port=PORT))
    deployed.compose(ROOT, "down", "--volumes", "--remove-orphans", check=False)  # leftovers of a run cut short
    try:
        yield deployed
    finally:
        deployed.compose(ROOT, "down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)


class Poller:
    """GET /api/movies every 100 ms while the stack is recreated; counts the seconds it failed."""

    def __init__(self, deployed: Deployment) -> None:
        self.deployed = deployed
        self.stop = threading.Event()
        self.failed_at: list[float] = []
        self.requests = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        deadline = time.monotonic() + 900  # bounded even if the test never stops it
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.requests += 1
            try:
                ok = self.deployed.http("GET", "/api/movies?limit=1", timeout=2)[0] == 200
            except OSError:
                ok = False
            if not ok:
                self.failed_at.append(time.monotonic())
            self.stop.wait(0.1)

    def outage_seconds(self) -> float:
        return round(self.failed_at[-1] - self.failed_at[0] + 0.1, 1) if self.failed_at else 0.0


def test_a_stack_of_the_last_release_is_upgraded_in_place_without_losing_a_row(
    deployment: Deployment, old_tree: Path
) -> None:
    deployment.compose(old_tree, "up", "--build", "--detach", "--wait", "--wait-timeout", "300")
    tag = "upgrade " + uuid.uuid4().hex[:8]
    movies = [deployment.http("POST", "/api/movies", {"title": f"{tag} {n}", "description": "kept"}) for n in range(3)]
    assert [status for status, _ in movies] == [200] * 3
    user = 424242
    status, stored = deployment.http(
        "POST", "/api/billing", {"user_id": user, "number_of_items": 2, "total_amount": "3.50"}
    )
    assert status == 200
    wait_for(lambda: deployment.psql("billing-db", f"SELECT count(*) FROM orders WHERE user_id = {user}") == "1", 60)
    # An order still queued at upgrade time must be stored by the new billing-app.
    deployment.compose(old_tree, "stop", "billing-app")
    status, queued = deployment.http(
        "POST", "/api/billing", {"user_id": user, "number_of_items": 1, "total_amount": "1"}
    )
    assert status == 200
    before = {
        "movies": deployment.psql("inventory-db", MOVIES.format(tag=tag)),
        "orders": deployment.psql("billing-db", ORDERS.format(user=user)),
    }

    poller = Poller(deployment)
    poller.thread.start()
    started = time.monotonic()
    try:
        deployment.compose(ROOT, "up", "--build", "--detach", "--wait", "--wait-timeout", "300")
        took = time.monotonic() - started
        wait_for(lambda: deployment.http("GET", "/api/movies?limit=1", timeout=2)[0] == 200, 60)
    finally:
        poller.stop.set()
        poller.thread.join(10)

    assert set(deployment.health().values()) == {"healthy"}, deployment.health()
    after_movies = deployment.psql("inventory-db", MOVIES.format(tag=tag))
    assert after_movies == before["movies"]
    wait_for(
        lambda: deployment.psql("billing-db", f"SELECT count(*) FROM orders WHERE user_id = {user}") == "2",
        60,
        what="the order queued before the upgrade to be stored",
    )
    rows = deployment.psql("billing-db", ORDERS.format(user=user)).splitlines()
    assert rows[: len(before["orders"].splitlines())] == before["orders"].splitlines()
    assert queued["message_id"] in rows[-1] and stored["message_id"] in rows[0]
    # The release's schema became migration 001, and every later migration was applied to its volume.
    for service in ("inventory-db", "billing-db"):
        shipped = sorted(p.name for p in (ROOT / "config" / service / "migrations").glob("*.sql"))
        assert deployment.psql(service, "SELECT name FROM admin.schema_migrations ORDER BY name").split() == shipped
    indexes = deployment.psql(
        "billing-db", "SELECT string_agg(indexname, ' ') FROM pg_indexes WHERE tablename = 'orders'"
    )
    assert "orders_user_id_id_idx" in indexes.split()
    # The upgraded stack works: a write and a read through every service.
    status, movie = deployment.http("POST", "/api/movies", {"title": f"{tag} after"})
    assert status == 200 and deployment.http("GET", f"/api/movies/{movie['id']}")[0] == 200
    figures = {
        "release": release(),
        "recreate_seconds": round(took, 1),
        "get_movies_failing_seconds": poller.outage_seconds(),
        "get_movies_requests": poller.requests,
        "get_movies_failed": len(poller.failed_at),
    }
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "upgrade.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nupgrade in place: {figures}")
