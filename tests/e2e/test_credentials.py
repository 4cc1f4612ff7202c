"""Credentials follow .env on existing volumes: an operator rotates every password (and renames the gateway's
broker user), runs `docker compose up -d --wait`, and the stack is healthy again with its data; the old
credentials no longer open anything.

The module leaves the stack running with the new credentials, and the env file and `stack.env` saying so.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest

from stack import SERVICES, Stack, run, wait_for

pytestmark = pytest.mark.e2e

PASSWORDS = ("INVENTORY_DB_PASSWORD", "BILLING_DB_PASSWORD", "RABBITMQ_GATEWAY_PASSWORD", "RABBITMQ_BILLING_PASSWORD")
# service -> the .env variables of its database (name, application role, password)
DATABASES = {
    "inventory-db": ("INVENTORY_DB_NAME", "INVENTORY_DB_USER", "INVENTORY_DB_PASSWORD"),
    "billing-db": ("BILLING_DB_NAME", "BILLING_DB_USER", "BILLING_DB_PASSWORD"),
}
# Broker users: (user variable, password variable)
BROKER_USERS = (
    ("RABBITMQ_GATEWAY_USER", "RABBITMQ_GATEWAY_PASSWORD"),
    ("RABBITMQ_BILLING_USER", "RABBITMQ_BILLING_PASSWORD"),
)


@dataclass
class Rotation:
    old: dict[str, str]
    new: dict[str, str]
    movie: dict[str, Any]
    order_user_id: int
    order_message_id: str


def write_env(stack: Stack, env: dict[str, str]) -> None:
    """The env file and `stack.env` both hold `env` (same format as tests/stack.py's make_env_file)."""
    stack.env.clear()
    stack.env.update(env)
    stack.env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))


def stored_orders(stack: Stack, user_id: int) -> list[dict[str, Any]]:
    answer = stack.http("GET", f"/api/orders?user_id={user_id}")
    assert answer.status == 200, answer.body
    return answer.json()


def post_order(stack: Stack) -> tuple[int, str]:
    """A new order through the gateway, waited for until billing-app has stored it: (user_id, message_id)."""
    user_id = secrets.randbelow(2**31 - 2) + 1
    answer = stack.http("POST", "/api/billing", {"user_id": user_id, "number_of_items": 2, "total_amount": 12})
    assert answer.status == 200, answer.body
    message_id = answer.json()["message_id"]
    wait_for(lambda: stored_orders(stack, user_id), timeout=30, what=f"order {message_id} to be stored")
    return user_id, message_id


@pytest.fixture(scope="module")
def rotation(stack: Stack) -> Rotation:
    created = stack.http("POST", "/api/movies", {"title": "Rotated credentials", "description": "still here"})
    assert created.status == 200, created.body
    user_id, message_id = post_order(stack)
    old = dict(stack.env)
    new = old | {name: secrets.token_hex(16) for name in PASSWORDS}
    new["RABBITMQ_GATEWAY_USER"] = f"gateway_{secrets.token_hex(4)}"
    write_env(stack, new)
    result = stack.compose("up", "--detach", "--wait", "--wait-timeout", "240", check=False)
    if result.returncode != 0:
        logs = stack.compose("logs", "--no-color", "--tail", "30", check=False).stdout
        pytest.fail(f"the stack did not come back with the rotated credentials:\n{result.stderr}\n{logs}")
    return Rotation(old, new, created.json(), user_id, message_id)


def test_every_container_is_healthy_again(stack: Stack, rotation: Rotation) -> None:
    assert {service: stack.health(service) for service in SERVICES} == dict.fromkeys(SERVICES, "healthy")


def test_movies_and_orders_written_before_the_rotation_are_still_there(stack: Stack, rotation: Rotation) -> None:
    movie = stack.http("GET", f"/api/movies/{rotation.movie['id']}")
    assert (movie.status, movie.json()) == (200, rotation.movie)
    orders = stored_orders(stack, rotation.order_user_id)
    assert [order["message_id"] for order in orders] == [rotation.order_message_id]


def database_login(stack: Stack, service: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """psql over TCP inside the database container, as the application role with `env`'s password.
    The password reaches psql through the environment of `docker exec -e`, never a command line."""
    name_var, user_var, password_var = DATABASES[service]
    return subprocess.run(
        ["docker", "exec", "-e", "PGPASSWORD", stack.container(service), "psql", "-X", "-At",
         "-h", "127.0.0.1", "-U", env[user_var], "-d", env[name_var], "-c", "SELECT current_user"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PGPASSWORD": env[password_var]},
    )  # fmt: skip


@pytest.mark.parametrize("service", DATABASES)
def test_the_old_database_password_is_rejected_and_the_new_one_accepted(
    stack: Stack, rotation: Rotation, service: str
) -> None:
    old = database_login(stack, service, rotation.old)
    assert old.returncode != 0 and "password authentication failed" in old.stderr, old.stdout + old.stderr
    new = database_login(stack, service, rotation.new)
    assert (new.returncode, new.stdout.strip()) == (0, rotation.new[DATABASES[service][1]]), new.stderr


# Runs inside the gateway container (pika, backend network): one AMQP login per credential pair read
# from stdin; prints "ok" or "login refused: ..." for each.
_BROKER_LOGIN = """
import json, sys
import pika
from pika.exceptions import AMQPConnectionError, AuthenticationError, ProbableAuthenticationError

def login(user, password):
    parameters = pika.ConnectionParameters("rabbit-queue", credentials=pika.PlainCredentials(user, password),
                                           connection_attempts=1, socket_timeout=5, stack_timeout=10)
    try:
        pika.BlockingConnection(parameters).close()
    except (ProbableAuthenticationError, AuthenticationError) as error:
        return f"login refused: {error}"
    except AMQPConnectionError as error:
        return f"connection failed: {error!r}"
    return "ok"

print(json.dumps([login(user, password) for user, password in json.load(sys.stdin)]))
"""


def broker_logins(stack: Stack, env: dict[str, str]) -> dict[str, str]:
    pairs = [(env[user_var], env[password_var]) for user_var, password_var in BROKER_USERS]
    out = stack.exec("api-gateway-app", "python", "-c", _BROKER_LOGIN, input=json.dumps(pairs)).stdout
    return dict(zip([user for user, _ in pairs], json.loads(out), strict=True))


def test_the_old_broker_credentials_are_rejected_and_the_new_ones_accepted(stack: Stack, rotation: Rotation) -> None:
    old = broker_logins(stack, rotation.old)
    assert all(outcome.startswith("login refused") for outcome in old.values()), old
    # The billing user keeps its name: only the definitions import can have changed its password.
    assert rotation.old["RABBITMQ_BILLING_USER"] == rotation.new["RABBITMQ_BILLING_USER"]
    assert broker_logins(stack, rotation.new) == dict.fromkeys(
        (rotation.new["RABBITMQ_GATEWAY_USER"], rotation.new["RABBITMQ_BILLING_USER"]), "ok"
    )


def test_the_renamed_gateway_user_no_longer_exists_on_the_broker(stack: Stack, rotation: Rotation) -> None:
    users = json.loads(stack.exec("rabbit-queue", "rabbitmqctl", "-q", "list_users", "--formatter", "json").stdout)
    assert sorted(user["user"] for user in users) == sorted(
        [rotation.new["RABBITMQ_GATEWAY_USER"], rotation.new["RABBITMQ_BILLING_USER"]]
    )
    assert rotation.old["RABBITMQ_GATEWAY_USER"] not in {user["user"] for user in users}


def test_orders_and_movies_work_end_to_end_with_the_new_credentials(stack: Stack, rotation: Rotation) -> None:
    post_order(stack)
    movies = stack.http("GET", "/api/movies")
    assert movies.status == 200 and rotation.movie in movies.json(), movies.body


def test_a_renamed_database_role_stops_the_server_with_a_clear_error(stack: Stack) -> None:
    """Names are fixed when a volume is initialised: starting it with another APP_DB_USER names the problem."""
    image = stack.inspect("billing-db", "{{.Config.Image}}")
    volume = f"{stack.container('billing-db')}-renamed-role"
    container, renamed_container = f"{volume}-init", f"{volume}-renamed"
    settings = ["-e", "APP_DB_NAME=billing_db", "-e", "APP_DB_PASSWORD=renamed-role-test"]
    try:
        run("docker", "run", "--detach", "--name", container, "--network", "none", *settings,
            "-e", "APP_DB_USER=billing_app", "-v", f"{volume}:/var/lib/postgresql/data", image)  # fmt: skip
        wait_for(
            lambda: run("docker", "inspect", "-f", "{{.State.Health.Status}}", container).stdout.strip() == "healthy",
            timeout=120,
            interval=1,
            what="the throwaway database to initialise",
        )
        run("docker", "stop", container)
        # The bootstrap alone: it must exit with the error, not exec a server that refuses every login.
        renamed = run("docker", "run", "--name", renamed_container, "--network", "none", *settings,
                      "-e", "APP_DB_USER=someone_else", "-v", f"{volume}:/var/lib/postgresql/data",
                      "--entrypoint", "db-bootstrap.sh", image, check=False, timeout=60)  # fmt: skip
    finally:
        run("docker", "rm", "--force", container, renamed_container, check=False)
        run("docker", "volume", "rm", volume, check=False)
    errors = [line for line in renamed.stderr.splitlines() if line.startswith("error:")]
    assert renamed.returncode != 0 and len(errors) == 1, renamed.stdout + renamed.stderr
    assert '"someone_else"' in errors[0] and "initiali" in errors[0], errors
