"""Schema migrations: config/<db>/migrations/NNN_description.sql, applied in order by the database
bootstrap at every start, each once, in its own transaction, recorded with its SHA-256.

The session's test stack shows what a new volume gets; a database container of the test stack's image,
run beside it on a throwaway volume (never a test stack's or a user's), shows what a later start does
with a new, a broken or a changed migration.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stack import PROJECT, ROOT, Stack, run, wait_for

pytestmark = pytest.mark.e2e

DATABASES = {"inventory-db": "movies", "billing-db": "orders"}


def shipped(service: str) -> list[Path]:
    return sorted((ROOT / "config" / service / "migrations").glob("*.sql"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("service", DATABASES)
def test_a_new_volume_has_every_migration_applied_and_recorded_with_its_checksum(stack: Stack, service: str) -> None:
    recorded = stack.psql(service, "SELECT name || ' ' || checksum FROM admin.schema_migrations ORDER BY name")
    assert recorded.splitlines() == [f"{path.name} {sha256(path)}" for path in shipped(service)]


@pytest.mark.parametrize(("service", "table"), DATABASES.items())
def test_tables_of_migrations_belong_to_the_owner_and_the_app_may_not_touch_the_record(
    stack: Stack, service: str, table: str
) -> None:
    db = stack.env["INVENTORY_DB_NAME" if service == "inventory-db" else "BILLING_DB_NAME"]
    app = stack.env["INVENTORY_DB_USER" if service == "inventory-db" else "BILLING_DB_USER"]
    owners = stack.psql(service, "SELECT schemaname || '.' || tablename || ' ' || tableowner FROM pg_tables "
                        "WHERE schemaname IN ('public', 'admin') ORDER BY 1")  # fmt: skip
    assert owners.splitlines() == [f"admin.schema_migrations {db}_owner", f"public.{table} {db}_owner"]
    rights = stack.psql(
        service,
        f"SELECT has_table_privilege('{app}', '{table}', 'INSERT'), "
        f"has_schema_privilege('{app}', 'admin', 'USAGE'), "
        f"has_table_privilege('{app}', 'admin.schema_migrations', 'SELECT'), "
        f"has_table_privilege('{app}', 'admin.schema_migrations', 'INSERT')",
    )
    assert rights == "t|f|f|f"


def test_the_orders_of_one_user_are_paged_through_the_index_on_user_and_id(stack: Stack) -> None:
    """Migration 002: a page of one user's orders is read in index order, without sorting them all."""
    plan = stack.psql(
        "billing-db",
        "SET enable_seqscan = off; EXPLAIN SELECT id FROM orders WHERE user_id = 7 ORDER BY id LIMIT 100",
    )
    assert "orders_user_id_id_idx" in plan and "Sort" not in plan, plan
    assert stack.psql("billing-db", "SELECT count(*) FROM pg_indexes WHERE indexname = 'orders_user_id_idx'") == "0"


# --- a later start: a new migration, a broken one, a changed one ---------------------------------------------


@dataclass
class Database:
    """billing-db's image run on its own volume, with the migrations of a directory of ours."""

    name: str
    migrations: Path
    env: dict[str, str]

    def start(self) -> subprocess.CompletedProcess[str]:
        env = [arg for key, value in self.env.items() for arg in ("-e", f"{key}={value}")]
        return run(
            "docker", "run", "--detach", "--name", self.name, "--volume", f"{self.name}:/var/lib/postgresql/data",
            "--volume", f"{self.migrations}:/etc/postgresql/migrations:ro", *env, f"{PROJECT}/billing-db",
        )  # fmt: skip

    def remove(self) -> None:
        run("docker", "stop", "--time", "30", self.name, check=False)  # a fast shutdown, as in compose
        run("docker", "rm", "--force", self.name, check=False)

    def logs(self) -> str:
        result = run("docker", "logs", self.name, check=False)
        return result.stdout + result.stderr

    def state(self) -> str:
        return run("docker", "inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}", self.name).stdout.strip()

    def psql(self, sql: str) -> str:
        return run(
            "docker", "exec", "-u", "postgres", self.name, "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
            "-d", self.env["APP_DB_NAME"], "-c", sql,
        ).stdout.strip()  # fmt: skip

    def run_until_healthy_or_exited(self) -> str:
        self.start()

        def settled() -> str | None:
            state = self.state()
            return state if state == "running healthy" or state.startswith("exited") else None

        return wait_for(
            settled,
            180,
            interval=1,
            what=f"{self.name} to become healthy or to stop",
        )

    def restart_with(self) -> str:
        self.remove()
        return self.run_until_healthy_or_exited()


@pytest.fixture
def database(stack: Stack, tmp_path: Path) -> Iterator[Database]:
    name = f"{PROJECT}-migrations-{uuid.uuid4().hex[:8]}"
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    for path in shipped("billing-db"):
        shutil.copy(path, migrations)
    migrations.chmod(0o755)
    env = {"APP_DB_NAME": "billing_db", "APP_DB_USER": "billing_app", "APP_DB_PASSWORD": uuid.uuid4().hex}
    db = Database(name, migrations, env)
    try:
        yield db
    finally:
        db.remove()
        run("docker", "volume", "rm", "--force", name, check=False)


def add_migration(db: Database, name: str, sql: str) -> None:
    path = db.migrations / name
    path.write_text(sql)
    path.chmod(0o644)


def test_a_new_migration_is_applied_at_the_next_start_and_every_row_is_kept(database: Database) -> None:
    assert database.run_until_healthy_or_exited() == "running healthy"
    database.psql("INSERT INTO orders (user_id, number_of_items, total_amount, message_id) "
                  "SELECT n, 1, 9.99, gen_random_uuid() FROM generate_series(1, 50) AS n")  # fmt: skip
    add_migration(database, "900_orders_note.sql", "ALTER TABLE orders ADD COLUMN note text NOT NULL DEFAULT '';\n")
    assert database.restart_with() == "running healthy"
    assert database.psql("SELECT count(*), min(note), max(note) FROM orders") == "50||"
    applied = database.psql("SELECT name FROM admin.schema_migrations ORDER BY name").splitlines()
    assert applied[-1] == "900_orders_note.sql"
    assert "schema migrations: 1 applied now (900_orders_note.sql)" in database.logs()
    # The new column is the app's to write, as every table and column the owner creates.
    assert database.psql("SELECT has_column_privilege('billing_app', 'orders', 'note', 'UPDATE')") == "t"
    # Started again, nothing is applied twice.
    assert database.restart_with() == "running healthy"
    assert "schema migrations: 0 applied now" in database.logs()


def test_a_broken_migration_stops_the_start_naming_its_file_and_changes_nothing(database: Database) -> None:
    assert database.run_until_healthy_or_exited() == "running healthy"
    database.psql("INSERT INTO orders (user_id, number_of_items, total_amount, message_id) "
                  "VALUES (1, 1, 1, gen_random_uuid())")  # fmt: skip
    add_migration(
        database,
        "901_half_done.sql",
        "CREATE TABLE half_done (id integer);\nINSERT INTO orders (user_id, number_of_items, total_amount, "
        "message_id) VALUES (2, 2, 2, gen_random_uuid());\nSELECT 1 / 0;\n",
    )
    assert database.restart_with().startswith("exited")
    logs = database.logs()
    assert "error: migration 901_half_done.sql failed" in logs and "division by zero" in logs, logs[-2000:]
    # Without the broken file, the database starts as it was: the migration left nothing behind.
    (database.migrations / "901_half_done.sql").unlink()
    assert database.restart_with() == "running healthy"
    assert database.psql("SELECT count(*) FROM orders") == "1"
    assert database.psql("SELECT to_regclass('half_done') IS NULL") == "t"
    assert "901_half_done.sql" not in database.psql("SELECT string_agg(name, ' ') FROM admin.schema_migrations")


def test_an_applied_migration_whose_file_changed_is_refused(database: Database) -> None:
    assert database.run_until_healthy_or_exited() == "running healthy"
    first = database.migrations / shipped("billing-db")[0].name
    first.write_text(first.read_text() + "-- edited after it was applied\n")
    assert database.restart_with().startswith("exited")
    logs = database.logs()
    assert f"error: migration {first.name} was applied with SHA-256" in logs, logs[-2000:]
    assert "must not change" in logs
