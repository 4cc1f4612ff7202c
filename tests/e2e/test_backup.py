"""scripts/backup.sh and scripts/restore.sh on the test stack, the way an operator runs them.

A backup taken online is restored into a fresh stack (`down --volumes`, then `up`): the same rows,
queue topology, ownership and grants, and the apps work on it. A damaged or incomplete backup is refused
with one error naming the problem, and the running data stay as they were. Backups go to temporary
directories, never to the repository's backups/. The module leaves the stack healthy, its data restored.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from stack import PREFIX, ROOT, Stack, fresh_user, wait_for

pytestmark = pytest.mark.e2e

BACKUP_FILES = ("inventory-db.dump", "billing-db.dump", "rabbit-queue.definitions.json")
# A queue and binding only a restore can bring back: the broker bootstrap does not define them.
EXTRA_QUEUE = "backup_check"
EXTRA_TOPOLOGY = {
    "queues": [{"name": EXTRA_QUEUE, "vhost": "/", "durable": True, "auto_delete": False, "arguments": {}}],
    "bindings": [
        {
            "source": "billing",
            "vhost": "/",
            "destination": EXTRA_QUEUE,
            "destination_type": "queue",
            "routing_key": EXTRA_QUEUE,
            "arguments": {},
        }
    ],
}
# Owners and access rights of everything in an application database, as one comparable text.
PRIVILEGES_SQL = """
SELECT 'relation', relname, relkind::text, pg_get_userbyid(relowner), coalesce(relacl::text, '')
  FROM pg_class WHERE relnamespace = 'public'::regnamespace
UNION ALL SELECT 'extension', extname, '', pg_get_userbyid(extowner), '' FROM pg_extension
UNION ALL SELECT 'default acl', pg_get_userbyid(defaclrole), defaclobjtype::text, '', defaclacl::text
  FROM pg_default_acl
UNION ALL SELECT 'schema', nspname, '', pg_get_userbyid(nspowner), coalesce(nspacl::text, '')
  FROM pg_namespace WHERE nspname = 'public'
UNION ALL SELECT 'database', datname, '', pg_get_userbyid(datdba), coalesce(datacl::text, '')
  FROM pg_database WHERE datname = current_database()
ORDER BY 1, 2, 3
"""


# --- helpers -----------------------------------------------------------------------------------


def script(stack: Stack, name: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run scripts/<name> against the test stack (its containers and env file), never a user's stack."""
    environment = {**os.environ, "PWC_CONTAINER_PREFIX": PREFIX, "PWC_ENV_FILE": str(stack.env_file), **env}
    return subprocess.run(
        [str(ROOT / "scripts" / name), *args], capture_output=True, text=True, timeout=600, env=environment
    )


def take_backup(stack: Stack, root: Path) -> Path:
    result = script(stack, "backup.sh", PWC_BACKUP_ROOT=str(root))
    assert result.returncode == 0, result.stdout + result.stderr
    backups = list(root.iterdir())
    assert len(backups) == 1, backups
    assert str(backups[0]) in result.stdout, "the script must say where the backup is"
    return backups[0]


def movies(stack: Stack) -> str:
    return stack.psql("inventory-db", "SELECT id, title, description FROM movies ORDER BY id")


def orders(stack: Stack) -> str:
    return stack.psql("billing-db", "SELECT * FROM orders ORDER BY id")


def data(stack: Stack) -> tuple[str, str]:
    return movies(stack), orders(stack)


def privileges(stack: Stack) -> tuple[str, str]:
    return stack.psql("inventory-db", PRIVILEGES_SQL), stack.psql("billing-db", PRIVILEGES_SQL)


def rabbitmqctl_lines(stack: Stack, *command: str) -> list[str]:
    out = stack.exec("rabbit-queue", "rabbitmqctl", "--quiet", *command, "--no-table-headers").stdout
    return sorted(line for line in out.splitlines() if line.strip())


def topology(stack: Stack) -> dict[str, list[str]]:
    return {
        "queues": rabbitmqctl_lines(stack, "list_queues", "name", "durable", "arguments"),
        "exchanges": rabbitmqctl_lines(stack, "list_exchanges", "name", "type", "durable", "arguments"),
        "bindings": rabbitmqctl_lines(
            stack, "list_bindings", "source_name", "destination_name", "destination_kind", "routing_key"
        ),
    }


def add_extra_topology(stack: Stack) -> None:
    stack.exec("rabbit-queue", "sh", "-c", "cat > /tmp/backup-check.json", input=json.dumps(EXTRA_TOPOLOGY))
    stack.exec("rabbit-queue", "rabbitmqctl", "--quiet", "import_definitions", "/tmp/backup-check.json")


def create_movie(stack: Stack, title: str, description: str = "") -> dict[str, object]:
    answer = stack.http("POST", "/api/movies", {"title": title, "description": description})
    assert answer.status == 200, (answer.status, answer.body)
    return answer.json()


def place_orders(stack: Stack, count: int) -> int:
    """POST ``count`` orders of a fresh user and wait until billing-app has stored them all."""
    user_id = fresh_user()
    for index in range(count):
        body = {"user_id": user_id, "number_of_items": index + 1, "total_amount": f"{index}.{index:02d}"}
        answer = stack.http("POST", "/api/billing", body)
        assert answer.status == 200, (answer.status, answer.body)
    wait_for(lambda: len(stack.order_rows(user_id=user_id)) == count, timeout=60, what=f"{count} orders stored")
    return user_id


def copy_backup(backup: Path, tmp_path: Path) -> Path:
    copy = tmp_path / backup.name
    shutil.copytree(backup, copy)
    return copy


def rewrite_checksums(backup: Path) -> None:
    """What a careless repair would do: checksums made to match whatever the files now hold."""
    sums = [f"{hashlib.sha256((backup / name).read_bytes()).hexdigest()}  {name}\n" for name in BACKUP_FILES]
    (backup / "SHA256SUMS").write_text("".join(sums))


def flip_a_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF
    path.write_bytes(bytes(content))


def truncate(path: Path) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) * 2 // 3])
    rewrite_checksums(path.parent)


def replace_by_the_other_dump(path: Path) -> None:
    path.write_bytes((path.parent / "inventory-db.dump").read_bytes())
    rewrite_checksums(path.parent)


def not_json(path: Path) -> None:
    path.write_text(path.read_text()[:-10])
    rewrite_checksums(path.parent)


# --- backup ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backup(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backup of the running stack with at least one movie and one order in it."""
    create_movie(stack, f"backup {uuid.uuid4().hex[:8]}", "for the backup tests")
    place_orders(stack, 1)
    return take_backup(stack, tmp_path_factory.mktemp("backups"))


def test_a_backup_is_private_and_verifiable_with_sha256sum(backup: Path) -> None:
    assert stat.S_IMODE(backup.stat().st_mode) == 0o700
    assert sorted(p.name for p in backup.iterdir()) == sorted([*BACKUP_FILES, "SHA256SUMS"])
    for path in backup.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    check = subprocess.run(
        ["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=backup, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert sorted(line.split(":")[0] for line in check.stdout.splitlines()) == sorted(BACKUP_FILES)
    definitions = json.loads((backup / "rabbit-queue.definitions.json").read_text())
    assert "billing_queue" in {queue["name"] for queue in definitions["queues"]}


def test_a_failed_backup_leaves_no_directory_behind(stack: Stack, tmp_path: Path) -> None:
    # The inventory dump succeeds, then the billing dump fails (no such database).
    result = script(stack, "backup.sh", PWC_BACKUP_ROOT=str(tmp_path), BILLING_DB_NAME="no_such_db")
    assert result.returncode != 0
    assert "dumping movies_db" in result.stdout, "the failure must come after a part was written"
    assert result.stderr.strip().splitlines()[-1].startswith("error: pg_dump of no_such_db"), result.stderr
    assert list(tmp_path.iterdir()) == []


# --- refused restores --------------------------------------------------------------------------

DAMAGES: dict[str, tuple[str, Callable[[Path], None], str]] = {
    # name: (file, damage, what the error says about it)
    "a flipped byte": ("billing-db.dump", flip_a_byte, "does not match its checksum"),
    "a truncated archive with matching checksums": ("billing-db.dump", truncate, "not a readable PostgreSQL archive"),
    "the inventory dump in place of the billing dump, matching checksums": (
        "billing-db.dump",
        replace_by_the_other_dump,
        'is a dump of database "movies_db", not billing_db',
    ),
    "definitions that are not JSON, matching checksums": (
        "rabbit-queue.definitions.json",
        not_json,
        "not a RabbitMQ definitions file",
    ),
    "a missing dump": ("billing-db.dump", Path.unlink, "is missing"),
    "missing checksums": ("SHA256SUMS", Path.unlink, "is missing"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_a_damaged_backup_is_refused_before_anything_is_changed(
    stack: Stack, backup: Path, tmp_path: Path, damage: str
) -> None:
    name, spoil, message = DAMAGES[damage]
    damaged = copy_backup(backup, tmp_path)
    spoil(damaged / name)
    # Data the backup does not have: a restore that started with inventory-db would remove this movie.
    create_movie(stack, f"after the backup {uuid.uuid4().hex[:8]}")
    place_orders(stack, 1)
    before = data(stack)

    result = script(stack, "restore.sh", str(damaged))

    assert result.returncode != 0
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    assert str(damaged / name) in errors[0] and message in errors[0], errors[0]
    assert "nothing was restored" in errors[0]
    assert "restoring" not in result.stdout
    assert data(stack) == before


# --- restore into a fresh stack ----------------------------------------------------------------


def test_a_backup_restored_into_a_fresh_stack_brings_back_data_topology_and_grants(
    stack: Stack, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    created = [create_movie(stack, f"{tag} movie {i}", f"description {i}") for i in range(20)]
    created.append(create_movie(stack, f"{tag} naïve | 'quoted' \\ \"x\"", "two\nlines\ttab, ünïcødé ✓"))
    place_orders(stack, 20)
    try:
        add_extra_topology(stack)
        wait_for(lambda: stack.queue_depth("billing_queue") == 0, timeout=60, what="an empty billing queue")
        rows_before, topology_before = data(stack), topology(stack)

        started = time.monotonic()
        backup = take_backup(stack, tmp_path / "backups")
        print(f"\nbackup: {time.monotonic() - started:.1f}s, {sum(p.stat().st_size for p in backup.iterdir())} bytes")

        stack.compose("down", "--volumes")
        stack.compose("up", "--detach", "--wait", "--wait-timeout", "300")
        assert movies(stack) == "" and orders(stack) == "", "down --volumes must have removed the data"
        fresh_privileges, fresh_topology = privileges(stack), topology(stack)
        assert fresh_topology != topology_before, "the extra queue must be gone before the restore"

        started = time.monotonic()
        result = script(stack, "restore.sh", str(backup))
        assert result.returncode == 0, result.stdout + result.stderr
        print(f"restore: {time.monotonic() - started:.1f}s")

        assert data(stack) == rows_before
        assert topology(stack) == topology_before
        # Ownership and grants exactly as the bootstrap of the fresh volume made them.
        assert privileges(stack) == fresh_privileges
        app_user, owner = stack.env["INVENTORY_DB_USER"], f"{stack.env['INVENTORY_DB_NAME']}_owner"
        movies_acl = stack.psql(
            "inventory-db",
            "SELECT pg_get_userbyid(relowner) || ' ' || relacl::text FROM pg_class WHERE relname = 'movies'",
        )
        assert movies_acl.startswith(f"{owner} ") and f"{app_user}=arwd/{owner}" in movies_acl, movies_acl
    finally:
        stack.exec("rabbit-queue", "rabbitmqctl", "--quiet", "delete_queue", EXTRA_QUEUE, check=False)

    # The apps work on the restored data without a restart.
    restored = created[-1]
    answer = stack.http("GET", f"/api/movies/{restored['id']}")
    assert answer.status == 200 and answer.json() == restored
    new = create_movie(stack, f"{tag} after the restore")
    assert int(new["id"]) > max(int(movie["id"]) for movie in created), "the id sequence must be restored"
    place_orders(stack, 1)
