"""The apps' pool (common.db) on the real inventory-db: statements with parameters are prepared on the
server once per connection and then run in one round trip; a new connection prepares them again; errors
keep the guarantees the pool gives (data errors and statement timeouts keep the connection and its
statements, a restarted server is replaced once); DDL that changes a returned column re-prepares.

The pool runs in a Python process inside the inventory-app container (the image's own code and
settings, on the backend network), driven one statement at a time from here: ``PoolDriver``. Its pool
has one connection, so what ``pg_prepared_statements`` shows is that connection's own statements.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from inventory_app.movies import _GET, _LIST_BY_TITLE
from stack import Stack, movies_locked, run, wait_for

pytestmark = pytest.mark.e2e

# Reads one JSON command per line, answers one JSON line: the rows or the error (its class, whether
# is_data_error says it is the data's fault), and how many times pg8000 waited for the server.
_DRIVER = """
import json, sys
import pg8000.native
from common import db
from common.config import Env
from common.db import DbSettings, Pool, is_data_error
# (pg8000's own class and plain text in a tree without prepared statements: the tests then fail, not crash)
Connection = getattr(db, "Connection", pg8000.native.Connection)
CustomPlan = getattr(db, "CustomPlan", str)
pool = Pool(DbSettings.from_env(Env()), size=1, application_name="prepared-statements-test")
waits = 0
handle_messages = Connection.handle_messages
def counted(self, context):
    global waits
    waits += 1
    return handle_messages(self, context)
Connection.handle_messages = counted
for line in sys.stdin:
    command = json.loads(line)
    sql = CustomPlan(command["sql"]) if command["custom"] else command["sql"]
    before = waits
    try:
        if command["transaction"]:
            with pool.transaction() as conn:
                rows = conn.run(sql, **command["params"])
        else:
            rows = pool.query(sql, **command["params"])
        answer = {"rows": rows}
    except Exception as exc:
        answer = {"error": type(exc).__name__, "data_error": is_data_error(exc), "message": str(exc)}
    answer["round_trips"] = waits - before
    print(json.dumps(answer, default=str), flush=True)
"""

PREPARED = "SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements ORDER BY prepare_time"


class PoolDriver:
    """A one-connection pool of inventory-app's code, in its container; :meth:`run` runs one statement."""

    def __init__(self, stack: Stack) -> None:
        self.process = subprocess.Popen(
            ["docker", "exec", "-i", stack.container("inventory-app"), "python", "-c", _DRIVER],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def run(self, sql: str, *, transaction: bool = False, custom: bool = False, **params: Any) -> dict[str, Any]:
        assert self.process.stdin and self.process.stdout
        command = {"sql": sql, "params": params, "transaction": transaction, "custom": custom}
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the driver ended"
        return json.loads(line)

    def rows(self, sql: str, **params: Any) -> list[list[Any]]:
        answer = self.run(sql, **params)
        assert "rows" in answer, answer
        return answer["rows"]

    def backend(self) -> int:
        return self.rows("SELECT pg_backend_pid()")[0][0]

    def prepared(self) -> list[list[Any]]:
        """The statement text and runs of every statement prepared on the driver's connection."""
        return self.rows(PREPARED)

    def close(self) -> None:
        assert self.process.stdin
        self.process.stdin.close()
        self.process.wait(30)


@pytest.fixture
def driver(stack: Stack) -> Iterator[PoolDriver]:
    pool = PoolDriver(stack)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def movie(stack: Stack) -> Iterator[int]:
    title = "prepared " + uuid.uuid4().hex[:12]
    movie_id = int(stack.psql("inventory-db", f"INSERT INTO movies (title) VALUES ('{title}') RETURNING id"))
    try:
        yield movie_id
    finally:
        stack.psql("inventory-db", f"DELETE FROM movies WHERE id = {movie_id}")


def positional(sql: str) -> str:
    """The statement as the server stores it: pg8000's ``:name`` placeholders become $1, $2..."""
    return sql.replace(":id", "$1")


def test_a_statement_is_prepared_once_per_connection_and_then_runs_in_one_round_trip(
    driver: PoolDriver, movie: int
) -> None:
    first = driver.run(_GET, id=movie)
    again = [driver.run(_GET, id=movie_id) for movie_id in (movie, 2**31 - 1, movie)]
    assert first["rows"] == [[movie, first["rows"][0][1], ""]]
    assert [answer["rows"] for answer in again] == [first["rows"], [], first["rows"]]
    # Parse/Describe/Sync once, then Bind/Execute/Sync: pg8000's unnamed statements wait three times.
    assert first["round_trips"] == 2
    assert [answer["round_trips"] for answer in again] == [1, 1, 1]
    assert driver.prepared() == [[positional(_GET), 4]]
    # In a transaction too: BEGIN, the prepared statement, COMMIT.
    assert driver.run(_GET, transaction=True, id=movie)["round_trips"] == 3
    assert driver.prepared() == [[positional(_GET), 5]]


def test_the_title_search_is_planned_with_its_values_every_time_never_prepared(
    stack: Stack, driver: PoolDriver
) -> None:
    tag = "prepared " + uuid.uuid4().hex[:12]
    stack.psql("inventory-db", f"INSERT INTO movies (title) VALUES ('{tag} one'), ('{tag} two')")
    try:
        for text in ("movie", "zzz", "e", "movie 12", "movie 13", "movie 14", "movie 15", tag):
            answer = driver.run(_LIST_BY_TITLE, custom=True, pattern=text, limit=100, offset=0)
            assert "rows" in answer, answer
            # Parse/Bind/Describe/Execute/Sync in one write (pg8000's own unnamed statements wait three times).
            assert answer["round_trips"] == 1, answer
    finally:
        stack.psql("inventory-db", f"DELETE FROM movies WHERE starts_with(title, '{tag}')")
    assert [row[1:] for row in answer["rows"]] == [[f"{tag} one", ""], [f"{tag} two", ""]]
    # A keyword the statement does not use is ignored, as pg8000 does.
    assert driver.run(_LIST_BY_TITLE, custom=True, pattern="zzz", limit=1, offset=0, unused=1)["rows"] == []
    assert driver.prepared() == []


def test_a_data_error_and_a_statement_timeout_keep_the_connection_and_its_prepared_statement(
    stack: Stack, driver: PoolDriver, movie: int
) -> None:
    assert driver.rows(_GET, id=movie)
    backend = driver.backend()
    # A value the server refuses at Bind (22P02 for an integer parameter) is the data's fault.
    refused = driver.run(_GET, id="not a number")
    assert refused["error"] == "DatabaseError" and refused["data_error"], refused
    assert "22P02" in refused["message"]
    with movies_locked(stack, 8):
        timed_out = driver.run(_GET, id=movie)
    assert timed_out["error"] == "StatementTimeout" and not timed_out["data_error"], timed_out
    assert timed_out["round_trips"] == 1, "a timed-out statement must not be run a second time"
    assert driver.rows(_GET, id=movie)
    assert driver.backend() == backend
    # Still the one statement: the refused value and the timed-out run (waiting for its lock) got no plan.
    assert driver.prepared() == [[positional(_GET), 2]]


def test_after_a_database_restart_the_replacement_connection_prepares_again(
    stack: Stack, driver: PoolDriver, movie: int
) -> None:
    expected = driver.rows(_GET, id=movie)
    before = driver.backend()
    try:
        run("docker", "restart", stack.container("inventory-db"))
        stack.wait_healthy("inventory-db")
        # The pooled connection is dead: replaced once, on which the statement is prepared and run.
        after_restart = driver.run(_GET, id=movie)
    finally:
        stack.wait_healthy(timeout=180)
    assert after_restart.get("rows") == expected, after_restart
    assert driver.backend() != before
    assert driver.prepared() == [[positional(_GET), 1]]


def test_a_connection_ended_by_the_server_is_replaced_and_prepares_again(
    stack: Stack, driver: PoolDriver, movie: int
) -> None:
    expected = driver.rows(_GET, id=movie)
    before = driver.backend()
    assert stack.psql("inventory-db", f"SELECT pg_terminate_backend({before})") == "t"
    wait_for(lambda: stack.psql("inventory-db", f"SELECT count(*) FROM pg_stat_activity WHERE pid = {before}") == "0",
             10, what="the backend to end")  # fmt: skip
    assert driver.rows(_GET, id=movie) == expected
    assert driver.backend() != before
    assert driver.prepared() == [[positional(_GET), 1]]


@pytest.fixture
def probe_table(stack: Stack) -> Iterator[str]:
    """A table of the test's own (created by the operator, readable by inventory-app's role)."""
    table = "prepared_probe_" + uuid.uuid4().hex[:8]
    user = stack.env["INVENTORY_DB_USER"]
    stack.psql(
        "inventory-db",
        f"CREATE TABLE {table} (id integer PRIMARY KEY, v integer NOT NULL); INSERT INTO {table} VALUES (1, 5);"
        f" GRANT SELECT ON {table} TO {user}",
    )
    try:
        yield table
    finally:
        stack.psql("inventory-db", f"DROP TABLE IF EXISTS {table}")


def test_ddl_that_changes_a_returned_column_prepares_the_statement_again(
    stack: Stack, driver: PoolDriver, probe_table: str
) -> None:
    """PostgreSQL re-plans a prepared statement by itself when a table changes, but refuses to run it
    once the type of a column it returns changed ("cached plan must not change result type"). Outside
    a transaction the pool prepares it again and runs it at once; inside one the transaction fails as
    "database unavailable" (the same call succeeds next time)."""
    select = f"SELECT id, v FROM {probe_table} WHERE id = :id"
    assert driver.rows(select, id=1) == [[1, 5]]
    stack.psql("inventory-db", f"ALTER TABLE {probe_table} ALTER COLUMN v TYPE bigint")
    answer = driver.run(select, id=1)
    assert answer.get("rows") == [[1, 5]], answer
    assert driver.prepared() == [[positional(select), 1]]

    stack.psql("inventory-db", f"ALTER TABLE {probe_table} ALTER COLUMN v TYPE numeric")
    refused = driver.run(select, transaction=True, id=1)
    assert refused["error"] == "DatabaseUnavailable" and not refused["data_error"], refused
    assert "cached plan must not change result type" in refused["message"]
    assert driver.prepared() == [], "the stale statement is closed on the server"
    assert driver.run(select, transaction=True, id=1).get("rows") == [[1, "5"]]

    # A column added or dropped elsewhere in the table: PostgreSQL just re-plans.
    stack.psql("inventory-db", f"ALTER TABLE {probe_table} ADD COLUMN w text")
    assert driver.run(select, id=1).get("rows") == [[1, "5"]]
    assert driver.prepared() == [[positional(select), 2]]


def test_statements_deallocated_behind_the_pool_s_back_are_prepared_again(driver: PoolDriver, movie: int) -> None:
    expected = driver.rows(_GET, id=movie)
    assert driver.rows("DEALLOCATE ALL") is None
    assert driver.rows(_GET, id=movie) == expected
    assert driver.prepared() == [[positional(_GET), 1]]


def test_a_connection_prepares_at_most_max_prepared_statements_then_runs_the_others_unprepared(
    driver: PoolDriver,
) -> None:
    """SQL text built on the fly must not grow the server's memory of a connection without bound."""
    from common.db import MAX_PREPARED

    for n in range(MAX_PREPARED + 6):
        assert driver.rows(f"SELECT CAST(:n AS integer) + {n}", n=1) == [[1 + n]]
    prepared = driver.prepared()
    assert len(prepared) == MAX_PREPARED and prepared[-1] == [f"SELECT CAST($1 AS integer) + {MAX_PREPARED - 1}", 1]
    # The prepared ones still run prepared, the others as unnamed statements: one round trip each.
    assert driver.run("SELECT CAST(:n AS integer) + 0", n=1)["round_trips"] == 1
    assert driver.run(f"SELECT CAST(:n AS integer) + {MAX_PREPARED}", n=2)["rows"] == [[MAX_PREPARED + 2]]
    assert driver.prepared()[0] == ["SELECT CAST($1 AS integer) + 0", 2] and len(driver.prepared()) == MAX_PREPARED
