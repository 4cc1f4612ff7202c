"""Start-up: what the faster start must not cost. The timing goals are measured by bench/startup.py, not here;
these tests hold the guarantees behind them.

- The broker still deletes the users .env no longer names before it reports healthy, and its start runs one
  Erlang VM, the server's: the pruning talks to the node with erl_call, never rabbitmqctl.
- A healthcheck retries while its container starts (--start-wait, scripts/image/healthcheck-start.sh), and
  only then: once it has passed, a failing probe fails at once, as before.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack import PREFIX, PROJECT, Stack, run, wait_for

pytestmark = pytest.mark.e2e

# Logs every Erlang VM started in the container (the server script and rabbitmqctl both run `erl` from PATH).
ERL_SHIM = '#!/bin/sh\nprintf "%s\\n" "$*" >>/tmp/erl-starts\nexec /usr/lib/erlang/bin/erl "$@"\n'
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BROKER = f"{PREFIX}startup-rabbit"


def health(name: str) -> str:
    return run("docker", "inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}", name).stdout.strip()


def wait_healthy(name: str) -> None:
    wait_for(lambda: health(name) == "running healthy" or not health(name).startswith("running"), 240, 1, name)
    if health(name) != "running healthy":
        logs = run("docker", "logs", "--tail", "40", name, check=False)
        raise AssertionError(f"{name} is {health(name)}:\n{logs.stdout}{logs.stderr}")


def erl_eval(name: str, expressions: str) -> str:
    """Erlang expressions evaluated on the broker node (erl_call, on stdin: nothing on a command line)."""
    out = run(
        "docker", "exec", "-i", name, "/usr/lib/erlang/bin/erl_call", "-sname", "rabbit", "-e", input=expressions + "\n"
    ).stdout
    assert out.startswith("{ok, "), out
    return out


@pytest.fixture(scope="module")
def broker(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway broker of the test image, its Erlang VM starts logged, on its own volume."""
    shims = tmp_path_factory.mktemp("erl-shim")
    shims.chmod(0o755)
    (shims / "erl").write_text(ERL_SHIM)
    (shims / "erl").chmod(0o755)
    remove = ("docker", "rm", "--force", "--volumes", BROKER)
    run(*remove, check=False)
    run("docker", "volume", "rm", BROKER, check=False)
    run("docker", "run", "--detach", "--name", BROKER, "--hostname", "startup-rabbit", "--read-only",
        "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
        "--network", f"{PROJECT}_backend", "-v", f"{BROKER}:/var/lib/rabbitmq", "-v", f"{shims}:/shims:ro",
        "-e", f"PATH=/shims:{IMAGE_PATH}", "-e", "RABBITMQ_GATEWAY_USER=gateway", "-e", "RABBITMQ_BILLING_USER=billing",
        "-e", "RABBITMQ_GATEWAY_PASSWORD=startup-test-gateway", "-e", "RABBITMQ_BILLING_PASSWORD=startup-test-billing",
        f"{PROJECT}/rabbit-queue")  # fmt: skip
    try:
        wait_healthy(BROKER)
        yield BROKER
    finally:
        run(*remove, check=False)
        run("docker", "volume", "rm", BROKER, check=False)


def docker_time(stamp: str) -> float:
    """A time from `docker inspect` or `docker logs -t` (RFC 3339, nanoseconds) as a Unix time."""
    return dt.datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", stamp.replace("Z", "+00:00"))).timestamp()


def test_a_stale_broker_user_is_deleted_before_healthy_and_the_start_runs_one_erlang_vm(broker: str) -> None:
    erl_eval(broker, 'rabbit_auth_backend_internal:add_user(<<"stale_user">>, <<"not-a-secret">>, <<"test">>).')
    restarted = time.time()
    since = str(int(restarted) - 1)
    run("docker", "restart", broker)  # /tmp is a new tmpfs: no marker, no log of VM starts
    wait_healthy(broker)
    # Read before anything else could run `erl` in the container.
    starts = run("docker", "exec", broker, "cat", "/tmp/erl-starts").stdout.splitlines()
    assert len(starts) == 1 and "-s rabbit boot" in starts[0], starts
    logs = run("docker", "logs", "-t", "--since", since, broker)
    lines = (logs.stdout + logs.stderr).splitlines()
    assert any("broker-bootstrap: deleted broker user stale_user" in line for line in lines), lines[-20:]
    users = erl_eval(broker, "[proplists:get_value(user, U) || U <- rabbit_auth_backend_internal:list_users()].")
    assert sorted(bytes(map(int, b.split(","))).decode() for b in re.findall(r"#Bin<([0-9,]+)>", users)) == [
        "billing",
        "gateway",
    ]
    # Healthy only after the pruning: the first successful probe of this start ended after its last log line.
    pruned = next(docker_time(line.split()[0]) for line in lines if "broker-bootstrap: broker users:" in line)
    probes = json.loads(run("docker", "inspect", "-f", "{{json .State.Health.Log}}", broker).stdout)
    first_ok = min(docker_time(p["End"]) for p in probes if p["ExitCode"] == 0 and docker_time(p["Start"]) > restarted)
    assert first_ok >= pruned, (probes, pruned)


def test_the_healthcheck_of_the_broker_requires_the_pruning(stack: Stack) -> None:
    check = stack.exec(
        "rabbit-queue", "env", "RABBITMQ_USERS_PRUNED_MARKER=/tmp/no-such-marker", "amqp-healthcheck.sh",
        "--start-wait=60", check=False,
    )  # fmt: skip
    assert check.returncode == 1 and "broker users not pruned yet" in check.stderr, check


def test_a_probe_retries_while_its_container_starts_and_never_once_it_has_passed(stack: Stack, tmp_path: Path) -> None:
    """In a young container, a probe waits for the service (here a server started 2 s later); once a probe
    has passed, a failing one fails at once, as without --start-wait."""
    script = (
        'http-healthcheck.sh 9999 /; echo "single=$?"; '
        "(sleep 2; exec python3 -m http.server 9999 --bind 127.0.0.1 --directory /tmp >/dev/null 2>&1) & "
        'SECONDS=0; http-healthcheck.sh --start-wait=60 9999 /; echo "waited=$? after=$SECONDS"; '
        'SECONDS=0; http-healthcheck.sh --start-wait=60 9998 /; echo "passed-once=$? after=$SECONDS"'
    )
    out = run("docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--network", "none", "--entrypoint", "bash",
              f"{PROJECT}/inventory-app", "-c", script).stdout  # fmt: skip
    results = dict(re.findall(r"(\w[\w-]*)=(\d+)", out))
    # Without the option: one try, nothing listens yet.
    assert results["single"] == "1", out
    # With it: retried until the server answered, long before the 20 s a probe may wait.
    assert results["waited"] == "0" and int(results["after"]) < 15, out
    # Then a failing probe is a single try again.
    assert re.search(r"passed-once=1 after=[0-2]\b", out), out


def test_once_healthy_a_failing_probe_of_the_stack_fails_at_once(stack: Stack) -> None:
    started = time.monotonic()
    check = stack.exec("inventory-app", "http-healthcheck.sh", "--start-wait=3600", "9", check=False)
    assert check.returncode == 1 and "nothing listens on port 9" in check.stderr, check
    assert time.monotonic() - started < 10, "retried although the container had been healthy"
