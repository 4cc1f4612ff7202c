"""What the databases' healthcheck checks, now that it logs in at most every 15 s (scripts/image/db-healthcheck.sh).

On a throwaway server of the inventory-db image that Docker does not probe (--no-healthcheck), so that every
login counted is one of the test's:
- probes a few seconds apart start one session as the application role, not one each (the CPU a login
  costs is most of a probe's);
- once the last login is 15 s old, a probe logs in again, and a refused login fails it and the next one;
- a recent login never hides a port nothing listens on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from stack import PREFIX, PROJECT, Stack, run, wait_for

pytestmark = pytest.mark.e2e

DATABASE = f"{PREFIX}healthcheck-db"
DB_NAME, DB_USER, DB_PASSWORD = "movies_db", "probe_test", "probe-test-password"
# Where the probe keeps the time of its last login as the application role, in the container's own /tmp.
LOGIN_CHECKED_FILE = "/tmp/.healthcheck-login-ok"
WRONG = ("not-the-password", "still-not-the-password")
STALE = f"printf '0\\n' >{LOGIN_CHECKED_FILE}; "
PROBES = 4


def probe(before: str = "", password: str = DB_PASSWORD) -> tuple[int, str]:
    """db-healthcheck.sh as Docker runs it, after the shell command ``before`` in the same exec."""
    result = run(
        "docker", "exec", "-e", f"APP_DB_PASSWORD={password}", DATABASE, "bash", "-c", f"{before}db-healthcheck.sh",
        check=False,
    )  # fmt: skip
    return result.returncode, result.stderr


def sessions() -> int:
    """Sessions ever established to the application's database (read from database postgres, which is not it)."""
    sql = f"SELECT sessions FROM pg_stat_database WHERE datname = '{DB_NAME}'"
    return int(run("docker", "exec", DATABASE, "psql", "-X", "-At", "-d", "postgres", "-c", sql).stdout.strip())


@pytest.fixture(scope="module")
def database(stack: Stack) -> Iterator[str]:
    # (stack: the session's images are built)
    run("docker", "rm", "--force", DATABASE, check=False)
    run("docker", "run", "--detach", "--rm", "--name", DATABASE, "--no-healthcheck", "--network", "none",
        "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/run/postgresql:uid=999,gid=999,mode=2775",
        "--tmpfs", "/var/lib/postgresql/data:uid=999,gid=999,mode=0700",
        "-e", f"APP_DB_NAME={DB_NAME}", "-e", f"APP_DB_USER={DB_USER}", "-e", f"APP_DB_PASSWORD={DB_PASSWORD}",
        f"{PROJECT}/inventory-db")  # fmt: skip
    try:
        wait_for(lambda: probe(STALE)[0] == 0, 120, 0.5, "the throwaway database to accept the probe's login")
        yield DATABASE
    finally:
        run("docker", "rm", "--force", DATABASE, check=False)


def test_probes_a_few_seconds_apart_log_in_once(database: str) -> None:
    before = sessions()
    started = time.monotonic()
    # The first probe finds its last login stale and logs in; the next ones check the port only.
    results = [probe(STALE if n == 0 else "") for n in range(PROBES)]
    took = time.monotonic() - started
    assert results == [(0, "")] * PROBES
    assert took < 10, f"{PROBES} probes took {took:.1f}s: the 15 s window cannot be checked"
    # A session reaches the statistics when it ends: wait for it, then check no other came.
    wait_for(lambda: sessions() > before, 10, 0.2, "the first probe's session in pg_stat_database")
    assert sessions() - before == 1


def test_a_stale_login_is_checked_again_and_a_refused_one_fails_the_probe(database: str) -> None:
    code, stderr = probe(STALE, WRONG[0])
    assert code == 1 and "password authentication failed" in stderr, stderr
    # A failed login leaves the record stale: the next probe logs in again.
    code, stderr = probe("", WRONG[1])
    assert code == 1 and "password authentication failed" in stderr, stderr
    before = sessions()
    assert probe() == (0, "")
    wait_for(lambda: sessions() > before, 10, 0.2, "the passing probe's session")


def test_a_recent_login_never_hides_a_closed_port(stack: Stack) -> None:
    # The database image with no server started, and a record saying a login passed a moment ago.
    script = f'printf "%s\\n" "$EPOCHSECONDS" >{LOGIN_CHECKED_FILE}; db-healthcheck.sh; echo "exit=$?"'
    result = run(
        "docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--network", "none", "--entrypoint", "bash",
        "-e", f"APP_DB_NAME={DB_NAME}", "-e", f"APP_DB_USER={DB_USER}", "-e", f"APP_DB_PASSWORD={DB_PASSWORD}",
        f"{PROJECT}/inventory-db", "-c", script,
    )  # fmt: skip
    assert "exit=1" in result.stdout and "nothing listens on 127.0.0.1:5432" in result.stderr, result
