"""Self-healing and rolling updates on the live swarm, measured from the client's side under a bounded
load on 127.0.0.1: a killed replica, a rolling update, an update that never turns healthy, a billing
consumer killed mid-run, and apps started before their databases and broker."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter

import pytest
from swarm_stack import REPLICAS, SwarmStack, record, swarm_load

from load import RequestMaker
from stack import fresh_user, run, wait_for

pytestmark = pytest.mark.swarm

CLIENTS = 4


def movie_requests(movie_id: int, write_every: int = 0) -> RequestMaker:
    """Reads of a list and of one movie; with ``write_every``, every n-th request creates a movie."""

    def make(number: int) -> tuple[str, str, object]:
        if write_every and number % write_every == 0:
            return "POST", "/api/movies", {"title": f"load {number}", "description": "swarm test"}
        if number % 2:
            return "GET", f"/api/movies/{movie_id}", None
        return "GET", "/api/movies?limit=5", None

    return make


def create_movie(swarm: SwarmStack, title: str) -> int:
    answer = swarm.http("POST", "/api/movies", {"title": title})
    assert answer.status == 200, answer.body
    return int(answer.json()["id"])


def container_env(swarm: SwarmStack, container: str) -> list[str]:
    return list(swarm.container_json(container)["Config"]["Env"])


def test_a_killed_inventory_replica_is_replaced_while_requests_keep_succeeding(swarm: SwarmStack) -> None:
    movie_id = create_movie(swarm, "kill test")
    before = set(swarm.containers("inventory-app"))
    victim = sorted(before)[0]
    load = swarm_load(movie_requests(movie_id), clients=CLIENTS, max_requests=20_000, seconds=150)
    with load:
        load.wait_sent(200)
        killed_at = time.monotonic()
        run("docker", "kill", victim)
        wait_for(lambda: len(set(swarm.containers("inventory-app")) - before) == 1, 90, 0.5, "a replacement task")
        swarm.wait_converged("inventory-app", timeout=90)
        replaced_in = time.monotonic() - killed_at
        load.wait_sent(load.sent + 200)
    result = load.report
    record(f"kill one of 3 inventory-app replicas: {result.brief()}; replaced and healthy in {replaced_in:.0f}s")
    after = set(swarm.containers("inventory-app"))
    assert victim not in after and len(after) == 3
    # Only requests in flight on the killed replica may fail: at most one per client. The gateway retries
    # an idempotent request once on a fresh connection, so in practice none does.
    assert len(result.failures()) <= CLIENTS, result.failures()


def test_a_rolling_update_of_inventory_app_under_load_fails_no_request(swarm: SwarmStack) -> None:
    movie_id = create_movie(swarm, "rolling update test")
    before = set(swarm.containers("inventory-app"))
    release = f"PWC_RELEASE={uuid.uuid4().hex[:8]}"
    load = swarm_load(movie_requests(movie_id, write_every=10), clients=CLIENTS, max_requests=40_000, seconds=240)
    with load:
        load.wait_sent(100)
        started = time.monotonic()
        run("docker", "service", "update", "--detach", "--env-add", release, swarm.service("inventory-app"))
        wait_for(
            lambda: (
                not before & set(swarm.containers("inventory-app"))
                and swarm.update_state("inventory-app") == "completed"
            ),
            200,
            1,
            "the rolling update to replace every inventory-app task",
        )
        took = time.monotonic() - started
        load.wait_sent(load.sent + 100)
    result = load.report
    record(f"rolling update of inventory-app (3 replicas, start-first): {result.brief()}; took {took:.0f}s")
    swarm.wait_converged("inventory-app")
    for container in swarm.containers("inventory-app"):
        assert release in container_env(swarm, container)
    assert result.failures() == []


def test_an_update_that_never_turns_healthy_is_rolled_back_by_itself(swarm: SwarmStack) -> None:
    movie_id = create_movie(swarm, "rollback test")
    before = set(swarm.containers("inventory-app"))
    broken = "DB_HOST=no-such-database"  # the release's database is unreachable: /health answers 503
    load = swarm_load(movie_requests(movie_id), clients=2, max_requests=40_000, seconds=240, pause=0.05)
    with load:
        started = time.monotonic()
        run("docker", "service", "update", "--detach", "--env-add", broken, swarm.service("inventory-app"))
        wait_for(lambda: swarm.update_state("inventory-app") == "rollback_completed", 200, 1, "the rollback")
        took = time.monotonic() - started
        swarm.wait_converged("inventory-app")
    result = load.report
    record(f"unhealthy update of inventory-app, rolled back by swarm in {took:.0f}s: {result.brief()}")
    spec_env = swarm.service_json("inventory-app")["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    assert broken not in spec_env
    after = swarm.containers("inventory-app")
    assert len(after) == REPLICAS["inventory-app"]
    assert all(broken not in container_env(swarm, c) for c in after)
    # The update stopped at its first slot, so the tasks of the two other slots are never touched. The first
    # slot may get a new task with the old spec: while the broken task is still counted there (restarted
    # under the restart policy, say), the slot holds two tasks, and swarm's rollback re-creates any slot
    # holding more than one, its healthy task included.
    kept = before & set(after)
    assert len(kept) >= REPLICAS["inventory-app"] - 1, f"only {len(kept)} of the healthy tasks kept"
    assert result.failures() == []


def stored_ids(swarm: SwarmStack, user_id: int) -> list[str]:
    """message_id of every stored order of ``user_id`` (one entry per row)."""
    return [row.message_id for row in swarm.order_rows(user_id=user_id)]


def stored_by_consumer(swarm: SwarmStack, since: float) -> tuple[Counter[str], int]:
    """From the consumers' logs: orders stored per task, and orders found already stored on redelivery."""
    logs = run(
        "docker", "service", "logs", "--no-trunc", "--since", str(int(since)), swarm.service("billing-app")
    ).stdout  # fmt: skip
    stored: Counter[str] = Counter()
    already = 0
    for task, new, old in re.findall(r"^(\S+)\s.*stored (\d+) orders \((\d+) already stored\)", logs, re.MULTILINE):
        # "<stack>_billing-app.<slot>.<task id>@<node>" -> "<slot>.<task id prefix>"
        stored[task.split("@")[0].removeprefix(swarm.service("billing-app") + ".")[:10]] += int(new)
        already += int(old)
    return stored, already


def test_two_billing_consumers_lose_and_duplicate_no_order_when_one_is_killed(swarm: SwarmStack) -> None:
    consumers = swarm.output("rabbit-queue", "rabbitmqctl", "-q", "list_consumers", "queue_name", "channel_pid")
    assert len([line for line in consumers.splitlines() if line.startswith("billing_queue\t")]) == 2, consumers
    user_id = fresh_user()
    total = 1500

    def order(number: int) -> tuple[str, str, object]:
        return "POST", "/api/billing", {"user_id": user_id, "number_of_items": 1, "total_amount": f"{number}.00"}

    started = time.time()
    victim = swarm.containers("billing-app")[0]
    load = swarm_load(order, clients=CLIENTS, max_requests=total, seconds=180, pause=0.005)
    with load:
        load.wait_sent(total // 3)
        run("docker", "kill", victim)
        load.wait_finished(180)
    result = load.report
    accepted = {answer.json()["message_id"] for answer in result.results if answer.status == 200}
    assert result.failures() == [], result.failures()[:5]
    assert len(accepted) == total
    wait_for(lambda: len(stored_ids(swarm, user_id)) >= len(accepted), 120, 1, "every order to be stored")
    swarm.wait_converged("billing-app", timeout=120)
    rows = stored_ids(swarm, user_id)
    lost = len(accepted - set(rows))
    duplicated = len(rows) - len(set(rows))
    unknown = len(set(rows) - accepted)
    stored, already = stored_by_consumer(swarm, started)
    record(
        f"billing, 2 consumers, one killed mid-run: {len(accepted)} orders accepted, {len(rows)} stored, "
        f"lost {lost}, duplicated {duplicated}; stored per consumer task {dict(stored)}, "
        f"redelivered orders found already stored: {already}"
    )
    assert (lost, duplicated, unknown) == (0, 0, 0)
    assert len([task for task, count in stored.items() if count > 0]) >= 2, "the two consumers compete"
    assert victim not in swarm.containers("billing-app")
    assert swarm.queue_depth("billing_queue.dlq") == 0


def scale(swarm: SwarmStack, replicas: dict[str, int]) -> None:
    run("docker", "service", "scale", "--detach", *(f"{swarm.service(n)}={r}" for n, r in replicas.items()))


def test_apps_started_before_their_databases_and_broker_converge_and_the_data_is_still_there(
    swarm: SwarmStack,
) -> None:
    movie_id = create_movie(swarm, "survives re-created tasks")
    # An order waits in the broker while no consumer runs; it must survive the broker's re-creation.
    scale(swarm, {"billing-app": 0})
    wait_for(lambda: not swarm.containers("billing-app"), 60, 0.5, "billing-app to stop")
    answer = swarm.http("POST", "/api/billing", {"user_id": 424242, "number_of_items": 2, "total_amount": "9.99"})
    assert answer.status == 200, answer.body
    message_id = answer.json()["message_id"]
    apps = {"inventory-app": 3, "billing-app": 2, "api-gateway-app": 1}
    stateful = {"inventory-db": 1, "billing-db": 1, "rabbit-queue": 1}
    failed_before = {n: swarm.failed_tasks(n) for n in apps}
    started = time.monotonic()
    try:
        scale(swarm, dict.fromkeys(REPLICAS, 0))
        wait_for(lambda: not any(swarm.containers(n) for n in REPLICAS), 120, 1, "every task to stop")
        # The apps first, with nothing to connect to: they must wait and retry, not crash.
        scale(swarm, apps)
        wait_for(lambda: all(len(swarm.containers(n)) == r for n, r in apps.items()), 60, 1, "the apps to start")
        first_containers = {c for n in apps for c in swarm.containers(n)}
        time.sleep(10)
        assert {c for n in apps for c in swarm.containers(n)} == first_containers, "an app exited while waiting"
        started = time.monotonic()
        scale(swarm, stateful)
    finally:
        scale(swarm, REPLICAS)
        swarm.wait_all_converged(timeout=240)
    converged_in = time.monotonic() - started
    restarted = {n: sorted(swarm.failed_tasks(n) - failed_before[n]) for n in apps}
    record(f"apps started before databases and broker: converged {converged_in:.0f}s after those started")
    assert swarm.http("GET", f"/api/movies/{movie_id}").json()["title"] == "survives re-created tasks"
    wait_for(
        lambda: len(swarm.order_rows(message_id=message_id)) == 1,
        60,
        1,
        "the order queued before the broker was re-created",
    )
    assert swarm.queue_depth("billing_queue") == 0
    assert not any(restarted.values()), json.dumps(restarted)
