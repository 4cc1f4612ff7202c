"""Least privilege and isolation, proven on the running test stack.

Each test checks one control the way an auditor would: `docker inspect`, the processes inside the
containers, logins to PostgreSQL and RabbitMQ as each role, name resolution from the backend network,
and where the secrets of the test stack's .env may and may not appear.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stack import PORT, PREFIX, PROJECT, ROOT, SERVICES, Stack, run, wait_for

pytestmark = pytest.mark.e2e

APPS = ("inventory-app", "billing-app", "api-gateway-app")
BACKEND_ONLY = tuple(s for s in SERVICES if s != "api-gateway-app")
# The non-root uid every process of each image runs as (the image's numeric USER).
IMAGE_UIDS = {"inventory-db": 999, "billing-db": 999, "rabbit-queue": 999} | dict.fromkeys(APPS, 10001)
# The secrets each service may receive (variables of .env); every other secret must be absent.
ALLOWED_SECRETS = {
    "inventory-db": {"INVENTORY_DB_PASSWORD"},
    "billing-db": {"BILLING_DB_PASSWORD"},
    "rabbit-queue": {"RABBITMQ_GATEWAY_PASSWORD", "RABBITMQ_BILLING_PASSWORD"},
    "inventory-app": {"INVENTORY_DB_PASSWORD"},
    "billing-app": {"BILLING_DB_PASSWORD", "RABBITMQ_BILLING_PASSWORD"},
    "api-gateway-app": {"RABBITMQ_GATEWAY_PASSWORD"},
}
# Bounded name resolution inside containers (glibc reads RES_OPTIONS): one 2 s try per query.
QUICK_DNS = "RES_OPTIONS=timeout:2 attempts:1"


def stack_secrets(stack: Stack) -> dict[str, str]:
    """The test stack's secrets: every *_PASSWORD variable of its .env."""
    found = {name: value for name, value in stack.env.items() if name.endswith("_PASSWORD")}
    assert all(len(value) >= 16 for value in found.values()), "generated secrets must be long enough to search for"
    return found


def docker_with_env(env: dict[str, str], *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """`docker ...` with extra variables in the CLI's environment, so `docker exec -e NAME` passes
    secrets to the container without putting them on any command line."""
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=120, input=input, env={**os.environ, **env}
    )


def inspect_container(stack: Stack, service: str) -> dict[str, Any]:
    return json.loads(run("docker", "inspect", stack.container(service)).stdout)[0]


# --- 1. docker inspect: user, capabilities, no-new-privileges, read-only root, ports ------------


def test_every_container_runs_as_a_numeric_non_root_user_with_no_capabilities(stack: Stack) -> None:
    problems = []
    for service in SERVICES:
        info = inspect_container(stack, service)
        host = info["HostConfig"]
        user = info["Config"]["User"]
        if not re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", user):
            problems.append(f"{service}: User {user!r} is not a numeric non-root uid[:gid]")
        if host["CapDrop"] != ["ALL"] or host["CapAdd"]:
            problems.append(f"{service}: CapDrop={host['CapDrop']} CapAdd={host['CapAdd']}")
        if "no-new-privileges:true" not in (host["SecurityOpt"] or []):
            problems.append(f"{service}: SecurityOpt={host['SecurityOpt']}")
        if any("unconfined" in option for option in host["SecurityOpt"] or []):
            problems.append(f"{service}: a security profile is disabled: {host['SecurityOpt']}")
        if host["Privileged"] or host["PidMode"] or host["UsernsMode"] or host["IpcMode"] not in ("private", ""):
            problems.append(f"{service}: shares host namespaces or is privileged")
        if host["Devices"]:
            problems.append(f"{service}: host devices {host['Devices']}")
        # Named volumes and tmpfs only: no bind mount of the host (e.g. docker.sock).
        bind_mounts = [m["Source"] for m in info["Mounts"] if m["Type"] == "bind"]
        if bind_mounts:
            problems.append(f"{service}: binds {bind_mounts}")
    assert not problems, "\n".join(problems)


# Where to try a write inside the image. The servers' users own their configuration directories
# (Debian packaging), so there only the read-only root filesystem stops them rewriting pg_hba.conf
# or rabbitmq-env.conf; the apps' code is owned by root.
WRITABLE_IF_NOT_READ_ONLY = {
    "inventory-db": "/etc/postgresql",
    "billing-db": "/etc/postgresql",
    "rabbit-queue": "/etc/rabbitmq",
} | dict.fromkeys(APPS, "/opt/app")


@pytest.mark.parametrize("service", SERVICES)
def test_the_root_filesystem_is_read_only_and_tmp_is_a_noexec_tmpfs(stack: Stack, service: str) -> None:
    info = inspect_container(stack, service)
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert "/tmp" in (info["HostConfig"]["Tmpfs"] or {})
    probe = f"{WRITABLE_IF_NOT_READ_ONLY[service]}/security-probe"
    write = stack.exec(service, "touch", probe, check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr, write.stderr
    # /tmp is writable, but cannot hold executables, set-uid files or devices.
    mounts = stack.exec(service, "cat", "/proc/mounts").stdout
    tmp_options = next(line.split()[3].split(",") for line in mounts.splitlines() if line.split()[1] == "/tmp")
    assert {"rw", "noexec", "nosuid", "nodev"} <= set(tmp_options), tmp_options


def test_only_the_gateway_has_a_port_published_on_the_host(stack: Stack) -> None:
    for service in SERVICES:
        info = inspect_container(stack, service)
        configured = info["HostConfig"]["PortBindings"] or {}
        active = {port: b for port, b in (info["NetworkSettings"]["Ports"] or {}).items() if b}
        if service == "api-gateway-app":
            assert list(configured) == ["3000/tcp"] and list(active) == ["3000/tcp"], (configured, active)
            assert {b["HostPort"] for b in active["3000/tcp"]} == {str(PORT)}
        else:
            assert configured == {} and active == {}, f"{service} publishes {configured or active}"
    answer = stack.http("GET", "/health")
    assert answer.status == 200, answer.body


# --- 2. processes inside the containers ----------------------------------------------------------

# One line per process: pid, name, the four uids, the four gids, effective and bounding capability
# sets, NoNewPrivs and Seccomp, read from /proc (the images have no `ps`).
PROCESS_TABLE = r"""
for status in /proc/[0-9]*/status; do
    pid=${status#/proc/}
    awk -F'\t' -v pid="${pid%/status}" '
        /^Name:/ {name=$2} /^Uid:/ {uid=$2" "$3" "$4" "$5} /^Gid:/ {gid=$2" "$3" "$4" "$5}
        /^CapEff:/ {eff=$2} /^CapBnd:/ {bnd=$2} /^NoNewPrivs:/ {nnp=$2} /^Seccomp:/ {sec=$2}
        END {if (name != "") printf "%s|%s|%s|%s|%s|%s|%s|%s\n", pid, name, uid, gid, eff, bnd, nnp, sec}
    ' "$status" 2>/dev/null
done
"""


@dataclass(frozen=True)
class Process:
    pid: str
    name: str
    uids: tuple[int, ...]
    gids: tuple[int, ...]
    cap_effective: int
    cap_bounding: int
    no_new_privs: str
    seccomp: str


def processes(stack: Stack, service: str) -> list[Process]:
    found = []
    for line in stack.exec(service, "sh", "-c", PROCESS_TABLE).stdout.splitlines():
        pid, name, uids, gids, eff, bnd, nnp, sec = line.split("|")
        # The awk reading a short-lived process's status may see /proc/<pid>/status vanish: skip it.
        if not uids:
            continue
        found.append(
            Process(
                pid=pid,
                name=name,
                uids=tuple(int(u) for u in uids.split()),
                gids=tuple(int(g) for g in gids.split()),
                cap_effective=int(eff, 16),
                cap_bounding=int(bnd, 16),
                no_new_privs=nnp,
                seccomp=sec,
            )
        )
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_no_process_runs_as_root_or_holds_a_capability(stack: Stack, service: str) -> None:
    table = processes(stack, service)
    listing = "\n".join(f"  pid {p.pid} {p.name}: uid {p.uids} gid {p.gids}" for p in table)
    assert len(table) >= 3, f"expected tini, supervisord and the service in {service}:\n{listing}"
    expected = IMAGE_UIDS[service]
    wrong_user = [p for p in table if set(p.uids) != {expected} or 0 in p.gids]
    assert not wrong_user, f"{service}: processes not running as uid {expected}:\n{listing}"
    privileged = [p for p in table if p.cap_effective or p.cap_bounding]
    assert not privileged, f"{service}: processes with capabilities: {privileged}"
    escalating = [p for p in table if p.no_new_privs != "1" or p.seccomp != "2"]
    assert not escalating, f"{service}: processes without no_new_privs or the seccomp filter: {escalating}"


def test_no_secret_is_visible_in_any_process_command_line(stack: Stack) -> None:
    values = stack_secrets(stack)
    for service in SERVICES:
        command_lines = stack.exec(
            service, "sh", "-c", r"for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' <$f 2>/dev/null; echo; done"
        ).stdout
        leaked = [name for name, value in values.items() if value in command_lines]
        assert not leaked, f"{service}: {leaked} visible in a process command line"


def test_the_database_and_broker_servers_do_not_keep_passwords_in_their_environment(stack: Stack) -> None:
    """The bootstrap scripts unset the passwords before exec'ing the server; the metrics exporter beside
    each database is started without the application role's password (`env -u`)."""
    values = stack_secrets(stack)
    # Process names as /proc shows them (15 characters at most).
    servers = [
        ("inventory-db", "postgres"),
        ("billing-db", "postgres"),
        ("inventory-db", "prometheus-post"),
        ("billing-db", "prometheus-post"),
        ("rabbit-queue", "beam.smp"),
    ]
    for service, name in servers:
        pids = [p.pid for p in processes(stack, service) if p.name == name]
        assert pids, f"no {name} process in {service}"
        environments = stack.exec(
            service, "sh", "-c", " ".join(f"tr '\\0' '\\n' </proc/{pid}/environ; echo;" for pid in pids)
        ).stdout
        assert "PATH=" in environments, f"could not read the environment of {name} in {service}"
        leaked = [n for n, value in values.items() if value in environments]
        assert not leaked, f"{service}: {name} holds {leaked} in its environment"


# --- 3. each container receives only its own secrets --------------------------------------------


def test_each_container_receives_only_its_own_secrets(stack: Stack) -> None:
    values = stack_secrets(stack)
    all_allowed = set().union(*ALLOWED_SECRETS.values())
    assert set(values) == all_allowed, "a secret was added to .env.example: say which services may receive it"
    problems = []
    for service in SERVICES:
        environment = "\n".join(inspect_container(stack, service)["Config"]["Env"])
        received = {name for name, value in values.items() if value in environment}
        if received != ALLOWED_SECRETS[service]:
            extra = sorted(received - ALLOWED_SECRETS[service])
            missing = sorted(ALLOWED_SECRETS[service] - received)
            problems.append(f"{service}: receives {extra} it must not have, lacks {missing}")
    assert not problems, "\n".join(problems)


# --- 4. secrets are absent from the repository, the images and the logs -------------------------


def operator_env_secrets() -> dict[str, str]:
    """Passwords of the operator's own .env at the repository root, when there is one."""
    env_file = ROOT / ".env"
    if not env_file.is_file():
        return {}
    found = {}
    for line in env_file.read_text().splitlines():
        name, _, value = line.partition("=")
        if name.strip().endswith("_PASSWORD") and len(value.strip()) >= 8:
            found[f".env {name.strip()}"] = value.strip()
    return found


def test_no_secret_is_in_any_tracked_file(stack: Stack) -> None:
    values = stack_secrets(stack) | operator_env_secrets()
    tracked = run("git", "-C", str(ROOT), "ls-files", "-z").stdout.split("\0")
    assert "docker-compose.yml" in tracked
    leaks = []
    for name in filter(None, tracked):
        path = ROOT / name
        if not path.is_file():
            continue
        content = path.read_bytes()
        leaks += [f"{name}: {secret}" for secret, value in values.items() if value.encode() in content]
    assert not leaks, leaks


@pytest.mark.parametrize("service", SERVICES)
def test_no_secret_is_baked_into_the_image(stack: Stack, service: str) -> None:
    image = f"{PROJECT}/{service}"
    history = run("docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    config = run("docker", "image", "inspect", image).stdout
    assert "supervisord" in history and "supervisord" in config, "history or config not read"
    leaked = [name for name, value in stack_secrets(stack).items() if value in history or value in config]
    assert not leaked, f"{image}: {leaked} found in its history or config"
    # Neither an ENV nor an ARG may carry a secret, whatever its value.
    image_env = json.loads(config)[0]["Config"]["Env"] or []
    secretive = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY)\w*=", re.IGNORECASE)
    assert not [e for e in image_env if secretive.match(e)], image_env
    assert not secretive.search(history), history


def failed_logins(stack: Stack) -> None:
    """Realistic noise for the logs: wrong passwords, and right passwords for the wrong user."""
    values = stack_secrets(stack)
    for db in DATABASES.values():
        wrong = psql_over_tcp(stack, db, "SELECT 1", password=values[db.password_var][::-1])
        assert "password authentication failed" in wrong.stderr, wrong.stderr
        superuser = psql_over_tcp(stack, db, "SELECT 1", user="postgres", password=values[db.password_var])
        assert "pg_hba.conf rejects connection" in superuser.stderr, superuser.stderr
    probes = [
        {"user": stack.env["RABBITMQ_GATEWAY_USER"], "password": values["RABBITMQ_BILLING_PASSWORD"]},
        {"user": stack.env["RABBITMQ_BILLING_USER"], "password": values["RABBITMQ_GATEWAY_PASSWORD"]},
    ]
    outcomes = broker_probe(stack, [{**p, "action": "connect"} for p in probes])
    assert all(o.startswith("login refused") for o in outcomes), outcomes


def test_no_secret_appears_in_the_logs_after_traffic_and_failed_logins(stack: Stack) -> None:
    assert stack.http("POST", "/api/movies", {"title": "Security log probe"}).status == 200
    malformed = stack.http("POST", "/api/movies", raw=b"{not json", headers={"Content-Type": "application/json"})
    assert malformed.status == 400
    assert stack.http("POST", "/api/billing", {"user_id": 0, "number_of_items": 1, "total_amount": 1}).status == 400
    order = stack.http("POST", "/api/billing", {"user_id": 7, "number_of_items": 1, "total_amount": "9.99"})
    assert order.status == 200, order.body
    assert stack.http("GET", "/api/no-such-route").status == 404
    failed_logins(stack)
    message_id = order.json()["message_id"]
    wait_for(
        lambda: len(stack.order_rows(message_id=message_id)) == 1,
        60,
        what="the order to be stored",
    )

    def logs(service: str) -> str:
        result = run("docker", "logs", stack.container(service))
        return result.stdout + result.stderr

    # The failed logins are in the logs, so the search below reads realistic logs.
    wait_for(lambda: "invalid credentials" in logs("rabbit-queue"), 30, what="the broker to log the failed login")
    for service in ("inventory-db", "billing-db"):
        assert "password authentication failed" in logs(service), service
    gateway_files = stack.exec("api-gateway-app", "sh", "-c", "cat /var/log/api-gateway/*.log").stdout
    assert "POST /api/billing 200" in gateway_files
    sources = {service: logs(service) for service in SERVICES} | {"gateway log volume": gateway_files}
    leaks = [
        f"{source}: {name}"
        for source, text in sources.items()
        for name, value in stack_secrets(stack).items()
        if value in text
    ]
    assert not leaks, leaks


# --- 5. PostgreSQL: the application roles ---------------------------------------------------------


@dataclass(frozen=True)
class Database:
    service: str
    client: str  # the other database container: it has psql, and reaches this one over TCP
    name_var: str
    user_var: str
    password_var: str
    table: str
    insert: str
    update: str


DATABASES = {
    "inventory-db": Database(
        "inventory-db",
        "billing-db",
        "INVENTORY_DB_NAME",
        "INVENTORY_DB_USER",
        "INVENTORY_DB_PASSWORD",
        "movies",
        "INSERT INTO movies (title) VALUES ('security probe')",
        "title = 'security probe, updated'",
    ),
    "billing-db": Database(
        "billing-db",
        "inventory-db",
        "BILLING_DB_NAME",
        "BILLING_DB_USER",
        "BILLING_DB_PASSWORD",
        "orders",
        "INSERT INTO orders (user_id, number_of_items, total_amount, message_id) VALUES (1, 1, 0, gen_random_uuid())",
        "total_amount = 1",
    ),
}


def psql_over_tcp(
    stack: Stack,
    db: Database,
    sql: str,
    *,
    user: str | None = None,
    password: str | None = None,
    client: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """psql from another container of the backend network, as the app role unless told otherwise.
    SQL goes through stdin; VERBOSITY=verbose puts the SQLSTATE in each error."""
    conninfo = (
        f"host={db.service} port=5432 dbname={stack.env[db.name_var]} "
        f"user={user or stack.env[db.user_var]} connect_timeout=5"
    )
    secret = password if password is not None else stack.env[db.password_var]
    return docker_with_env(
        {"PGPASSWORD": secret},
        "exec", "-i", "-e", "PGPASSWORD", stack.container(client or db.client),
        "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", conninfo,
        input=sql,
    )  # fmt: skip


@pytest.mark.parametrize("service", DATABASES)
def test_the_app_role_can_read_and_write_its_table(stack: Stack, service: str) -> None:
    db = DATABASES[service]
    script = f"""
        BEGIN;
        {db.insert} RETURNING id AS probe_id \\gset
        SELECT count(*) FROM {db.table} WHERE id = :probe_id;
        UPDATE {db.table} SET {db.update} WHERE id = :probe_id RETURNING id;
        DELETE FROM {db.table} WHERE id = :probe_id RETURNING id;
        ROLLBACK;
    """
    result = psql_over_tcp(stack, db, script)
    assert result.returncode == 0, result.stderr
    count, updated, deleted = result.stdout.split()
    assert count == "1" and updated == deleted, result.stdout


def forbidden_statements(stack: Stack, db: Database) -> list[str]:
    owner = f"{stack.env[db.name_var]}_owner"
    return [
        f"DROP TABLE {db.table}",
        "CREATE TABLE security_probe (id integer)",
        f"ALTER TABLE {db.table} ADD COLUMN security_probe integer",
        f"TRUNCATE {db.table}",
        "CREATE ROLE security_probe",
        "CREATE DATABASE security_probe",
        "ALTER ROLE CURRENT_USER SUPERUSER",
        f'SET ROLE "{owner}"',
        f'GRANT "{owner}" TO CURRENT_USER',
        "DROP SCHEMA public CASCADE",
        "COPY (SELECT 1) TO PROGRAM 'true'",
    ]


@pytest.mark.parametrize("service", DATABASES)
def test_the_app_role_cannot_change_the_schema_create_roles_or_escalate(stack: Stack, service: str) -> None:
    db = DATABASES[service]
    allowed = []
    for statement in forbidden_statements(stack, db):
        # Inside a transaction that is rolled back: should a statement succeed after all, the test
        # fails without damaging the stack for the tests that follow. CREATE DATABASE cannot run in one.
        in_transaction = not statement.startswith("CREATE DATABASE")
        result = psql_over_tcp(stack, db, f"BEGIN; {statement}; ROLLBACK;" if in_transaction else f"{statement};")
        # 42501 = insufficient_privilege
        if result.returncode == 0 or "ERROR:  42501:" not in result.stderr:
            allowed.append(f"{statement}: rc={result.returncode} {result.stderr.strip()}")
            if not in_transaction:
                stack.psql(service, "DROP DATABASE IF EXISTS security_probe")
    assert not allowed, "not refused with a permission error:\n" + "\n".join(allowed)
    still_there = psql_over_tcp(stack, db, f"SELECT to_regclass('{db.table}') IS NOT NULL;")
    assert still_there.stdout.strip() == "t", still_there.stderr


@pytest.mark.parametrize("service", DATABASES)
def test_the_app_role_is_not_a_superuser_and_does_not_own_its_table(stack: Stack, service: str) -> None:
    db = DATABASES[service]
    owner = f"{stack.env[db.name_var]}_owner"
    result = psql_over_tcp(
        stack,
        db,
        f"""
        SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls
          FROM pg_roles WHERE rolname = current_user;
        SELECT tableowner FROM pg_tables WHERE schemaname = 'public' AND tablename = '{db.table}';
        SELECT rolcanlogin FROM pg_roles WHERE rolname = '{owner}';
        SELECT pg_has_role(current_user, '{owner}', 'MEMBER');
        SELECT string_agg(rolname, ',') FROM pg_roles WHERE rolsuper;
        """,
    )
    assert result.returncode == 0, result.stderr
    attributes, table_owner, owner_can_login, member_of_owner, superusers = result.stdout.split("\n")[:5]
    assert attributes == "f|f|f|f|f", "superuser|createrole|createdb|replication|bypassrls = " + attributes
    assert table_owner == owner and owner_can_login == "f" and member_of_owner == "f"
    assert superusers == "postgres"


@pytest.mark.parametrize("service", DATABASES)
def test_postgres_cannot_log_in_over_tcp_even_with_a_valid_password(stack: Stack, service: str) -> None:
    db = DATABASES[service]
    password = stack.env[db.password_var]
    # From another container, and from inside the server's own container over 127.0.0.1.
    remote = psql_over_tcp(stack, db, "SELECT 1;", user="postgres", password=password)
    assert remote.returncode != 0 and "pg_hba.conf rejects connection for host" in remote.stderr, remote.stderr
    assert 'user "postgres"' in remote.stderr
    local_tcp = docker_with_env(
        {"PGPASSWORD": password},
        "exec", "-e", "PGPASSWORD", stack.container(service),
        "psql", "-X", f"host=127.0.0.1 dbname={stack.env[db.name_var]} user=postgres", "-c", "SELECT 1",
    )  # fmt: skip
    assert local_tcp.returncode != 0 and "pg_hba.conf rejects connection" in local_tcp.stderr, local_tcp.stderr
    # The operator's way in (local socket, peer authentication as the postgres OS user) still works.
    assert stack.psql(service, "SELECT current_user") == "postgres"


@pytest.mark.parametrize("service", DATABASES)
def test_passwords_are_checked_with_scram_and_nothing_else_is_accepted(stack: Stack, service: str) -> None:
    db = DATABASES[service]
    assert stack.psql(service, "SHOW password_encryption") == "scram-sha-256"
    weak = stack.psql(service, "SELECT rolname FROM pg_authid WHERE rolpassword NOT LIKE 'SCRAM-SHA-256$%'")
    assert weak == "", f"roles with a non-SCRAM password: {weak}"
    rules = stack.psql(service, "SELECT type, auth_method, error FROM pg_hba_file_rules")
    methods = {tuple(line.split("|")) for line in rules.splitlines()}
    # (type, method, error): an unparsable line would carry an error and not match.
    assert methods <= {("local", m, "") for m in ("peer", "reject")} | {
        ("host", m, "") for m in ("reject", "scram-sha-256")
    }, rules
    wrong = psql_over_tcp(stack, db, "SELECT 1;", password=stack.env[db.password_var][::-1])
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr, wrong.stderr
    # Through the socket, only the postgres OS user as the postgres role: not the app role.
    socket_app = stack.exec(
        service, "psql", "-X", "-h", "/run/postgresql", "-U", stack.env[db.user_var], "-d", stack.env[db.name_var],
        "-c", "SELECT 1", user="postgres", check=False,
    )  # fmt: skip
    assert socket_app.returncode != 0 and "pg_hba.conf rejects connection" in socket_app.stderr, socket_app.stderr


# --- 6. RabbitMQ: users and permissions ---------------------------------------------------------

# Runs inside the gateway container (it has pika and is on the backend network). Reads a list of
# probes (credentials included) from stdin, prints one outcome per probe:
# "ok", "login refused: ...", "<reply code> <reply text>" when the broker closes the channel.
_BROKER_PROBE = """
import json, sys
import pika
from pika.exceptions import AMQPConnectionError, AuthenticationError, ChannelClosedByBroker
from pika.exceptions import ProbableAuthenticationError

spec = json.load(sys.stdin)

def attempt(probe):
    parameters = pika.ConnectionParameters(
        spec["host"], credentials=pika.PlainCredentials(probe["user"], probe["password"]),
        connection_attempts=1, socket_timeout=5, stack_timeout=10, blocked_connection_timeout=10)
    try:
        connection = pika.BlockingConnection(parameters)
    except (ProbableAuthenticationError, AuthenticationError) as error:
        return f"login refused: {error}"
    except AMQPConnectionError as error:
        return f"connection failed: {error!r}"
    try:
        channel = connection.channel()
        action = probe["action"]
        if action == "publish":
            channel.confirm_delivery()
            channel.basic_publish(probe["exchange"], probe["routing_key"], b"{}",
                                  pika.BasicProperties(content_type="application/json"))
        elif action == "consume":
            channel.basic_cancel(channel.basic_consume(probe["queue"], lambda *args: None))
        elif action == "get":
            method, _, _ = channel.basic_get(probe["queue"])
            if method is not None:
                channel.basic_nack(method.delivery_tag, requeue=True)
        elif action == "declare":
            channel.queue_declare(probe["queue"], durable=True)
        return "ok"
    except ChannelClosedByBroker as error:
        return f"{error.reply_code} {error.reply_text}"
    finally:
        if connection.is_open:
            connection.close()

print(json.dumps([attempt(probe) for probe in spec["probes"]]))
"""


def broker_probe(stack: Stack, probes: list[dict[str, str]], host: str = "rabbit-queue") -> list[str]:
    spec = json.dumps({"host": host, "probes": probes})
    out = stack.exec("api-gateway-app", "python", "-c", _BROKER_PROBE, input=spec).stdout
    return json.loads(out)


def broker_expectations(stack: Stack) -> list[tuple[str, dict[str, str], str]]:
    """(what, probe, expected outcome prefix)."""
    queue = stack.env["RABBITMQ_QUEUE"]
    gateway = {"user": stack.env["RABBITMQ_GATEWAY_USER"], "password": stack.env["RABBITMQ_GATEWAY_PASSWORD"]}
    billing = {"user": stack.env["RABBITMQ_BILLING_USER"], "password": stack.env["RABBITMQ_BILLING_PASSWORD"]}
    refused = "403 ACCESS_REFUSED"
    return [
        ("guest cannot log in", {"user": "guest", "password": "guest", "action": "connect"}, "login refused"),
        ("gateway publishes to the billing exchange", {**gateway, "action": "publish", "exchange": "billing",
         "routing_key": "security-probe-unrouted"}, "ok"),
        ("gateway cannot consume billing_queue", {**gateway, "action": "consume", "queue": queue}, refused),
        ("gateway cannot read the dead letters", {**gateway, "action": "get", "queue": f"{queue}.dlq"}, refused),
        ("gateway cannot publish via the default exchange to billing_queue", {**gateway, "action": "publish",
         "exchange": "", "routing_key": queue}, refused),
        ("gateway cannot publish via the default exchange to billing_queue.dlq", {**gateway, "action": "publish",
         "exchange": "", "routing_key": f"{queue}.dlq"}, refused),
        ("gateway cannot publish to the dead-letter exchange", {**gateway, "action": "publish",
         "exchange": f"{queue}.dlx", "routing_key": f"{queue}.dlq"}, refused),
        ("gateway cannot declare a queue", {**gateway, "action": "declare", "queue": "security-probe"}, refused),
        ("billing consumes billing_queue", {**billing, "action": "consume", "queue": queue}, "ok"),
        ("billing cannot publish to the billing exchange", {**billing, "action": "publish", "exchange": "billing",
         "routing_key": queue}, refused),
        ("billing cannot publish via the default exchange", {**billing, "action": "publish", "exchange": "",
         "routing_key": queue}, refused),
        ("billing cannot read the dead letters", {**billing, "action": "get", "queue": f"{queue}.dlq"}, refused),
        ("billing cannot declare a queue", {**billing, "action": "declare", "queue": "security-probe"}, refused),
    ]  # fmt: skip


def test_broker_users_can_do_only_their_own_job(stack: Stack) -> None:
    expectations = broker_expectations(stack)
    outcomes = broker_probe(stack, [probe for _, probe, _ in expectations])
    wrong = [
        f"{what}: expected {expected!r}, got {outcome!r}"
        for (what, _, expected), outcome in zip(expectations, outcomes, strict=True)
        if not outcome.startswith(expected)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_broker_has_no_guest_user_and_only_the_two_app_users(stack: Stack) -> None:
    users = json.loads(stack.exec("rabbit-queue", "rabbitmqctl", "-q", "list_users", "--formatter", "json").stdout)
    assert sorted(u["user"] for u in users) == sorted(
        [stack.env["RABBITMQ_GATEWAY_USER"], stack.env["RABBITMQ_BILLING_USER"]]
    )
    assert all(u["tags"] == [] for u in users), users  # no administrator/management tag


def listening_ports(stack: Stack, service: str) -> set[int]:
    """TCP ports in LISTEN state (st 0A) inside a container, from /proc/net (no ss/netstat there)."""
    table = stack.exec(service, "cat", "/proc/net/tcp", "/proc/net/tcp6").stdout
    ports = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A":
            address, port = fields[1].rsplit(":", 1)
            # 127.0.0.11 is Docker's embedded DNS resolver, not the service.
            if address != "0B00007F":
                ports.add(int(port, 16))
    return ports


def test_the_management_plugin_is_off_and_only_amqp_metrics_and_erlang_ports_listen(stack: Stack) -> None:
    # Only rabbitmq_prometheus is enabled, with what it depends on; not the management plugin (UI, HTTP API).
    # --enabled: the explicitly enabled ones; --implicitly-enabled adds their dependencies.
    explicit = stack.exec("rabbit-queue", "rabbitmq-plugins", "-q", "list", "--enabled", "--minimal").stdout
    assert explicit.split() == ["rabbitmq_prometheus"], f"enabled plugins: {explicit}"
    enabled = stack.exec("rabbit-queue", "rabbitmq-plugins", "-q", "list", "--implicitly-enabled", "--minimal").stdout
    assert "rabbitmq_management" not in enabled.split(), f"enabled plugins: {enabled}"
    ports = listening_ports(stack, "rabbit-queue")
    assert 15672 not in ports
    # AMQP, the metrics (rabbitmq_prometheus, read-only, backend network only), plus the Erlang port mapper and
    # distribution port that rabbitmqctl uses (cookie-protected).
    assert ports == {5672, 15692, 4369, 25672}, ports


def test_the_databases_and_apps_listen_only_on_their_service_and_metrics_ports(stack: Stack) -> None:
    # The databases: PostgreSQL and its metrics exporter; the apps: their API and /metrics (billing-app: of
    # its API and of its consumer). Only 3000 is published (test_only_the_gateway_has_a_port_published_on_the_host).
    databases = {service: {5432, 9187} for service in ("inventory-db", "billing-db")}
    expected = databases | {"inventory-app": {8080, 9100}, "billing-app": {8080, 9100, 9101}}
    for service, ports in expected.items():
        assert listening_ports(stack, service) == ports, service
    assert listening_ports(stack, "api-gateway-app") == {3000, 9100}


# --- 7. network isolation ---------------------------------------------------------------------------


def resolves_debian_archive(stack: Stack, service: str) -> bool:
    result = run(
        "docker", "exec", "-e", QUICK_DNS, stack.container(service), "getent", "ahosts", "deb.debian.org",
        check=False, timeout=60,
    )  # fmt: skip
    return result.returncode == 0


def test_backend_containers_cannot_reach_the_outside_world(stack: Stack) -> None:
    # Control: from the edge network, the Debian archive's name resolves, so a failure below is isolation.
    assert resolves_debian_archive(stack, "api-gateway-app"), "the gateway (edge network) cannot resolve names"
    reachable = []
    for service in BACKEND_ONLY:
        if not resolves_debian_archive(stack, service):
            continue
        # Should the name resolve, connecting must still fail (bounded to 5 s).
        connect = run(
            "docker", "exec", stack.container(service),
            "timeout", "5", "bash", "-c", "exec 3<>/dev/tcp/deb.debian.org/80", check=False, timeout=60,
        )  # fmt: skip
        if connect.returncode == 0:
            reachable.append(service)
    assert not reachable, f"reach deb.debian.org:80: {reachable}"


def test_the_backend_network_is_internal_and_only_the_gateway_is_on_the_edge(stack: Stack) -> None:
    networks = {
        name: json.loads(run("docker", "network", "inspect", f"{PROJECT}_{name}").stdout)[0]
        for name in ("backend", "edge")
    }
    assert networks["backend"]["Internal"] is True
    assert networks["edge"]["Internal"] is False
    for service in SERVICES:
        attached = set(inspect_container(stack, service)["NetworkSettings"]["Networks"])
        expected = {f"{PROJECT}_backend", f"{PROJECT}_edge"} if service == "api-gateway-app" else {f"{PROJECT}_backend"}
        assert attached == expected, service


# --- 8. the repository -----------------------------------------------------------------------------


def test_env_is_ignored_by_git_and_docker_and_never_tracked() -> None:
    assert run("git", "-C", str(ROOT), "check-ignore", "-q", ".env", check=False).returncode == 0
    tracked = run("git", "-C", str(ROOT), "ls-files").stdout.split()
    env_files = [f for f in tracked if re.search(r"(^|/)\.env(\..*)?$", f) and f != ".env.example"]
    assert not env_files, env_files
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in dockerignore, "the build context must not include .env"


def test_env_example_holds_no_password_value() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    passwords = [line for line in lines if re.match(r"\w*(PASSWORD|SECRET|TOKEN)\w*=", line)]
    assert passwords, "no password variable found in .env.example"
    assert all(line.endswith("=") for line in passwords), passwords


# --- 9. secrets given as files (*_FILE) ---------------------------------------------------------------


@dataclass
class FileSecretContainer:
    """A throwaway container of a test image, its secrets given as mounted files only."""

    service: str
    name: str
    secret_values: list[str]


def start_file_secret_containers(stack: Stack, secret_dir: Path) -> dict[str, FileSecretContainer]:
    values = stack_secrets(stack)
    backend = f"{PROJECT}_backend"
    hardening = ["--cap-drop", "ALL", "--security-opt", "no-new-privileges:true"]
    app_hardening = [*hardening, "--read-only", "--tmpfs", "/tmp"]
    fresh = {"db": secrets.token_hex(16), "gateway": secrets.token_hex(16), "billing": secrets.token_hex(16)}

    def secret_file(name: str, value: str, uid: int) -> list[str]:
        path = secret_dir / name
        path.write_text(value + "\n")
        os.chown(path, uid, uid)
        path.chmod(0o400)
        return ["-v", f"{path}:/run/secrets/{name}:ro"]

    plans: dict[str, tuple[list[str], list[str]]] = {
        # A new database, no network at all: its healthcheck logs in over 127.0.0.1 with the file's password.
        "billing-db": (
            [*hardening, "--network", "none", "-v", f"{PREFIX}secfile-billing-database:/var/lib/postgresql/data",
             *secret_file("billing_db_password", fresh["db"], 999),
             "-e", "APP_DB_NAME=billing_db", "-e", "APP_DB_USER=billing_app",
             "-e", "APP_DB_PASSWORD_FILE=/run/secrets/billing_db_password"],
            [fresh["db"]],
        ),
        # A new broker on the backend network (under its own name), checked by logging in with pika.
        "rabbit-queue": (
            [*hardening, "--network", backend, "--hostname", "secfile-rabbit",
             "-v", f"{PREFIX}secfile-rabbit-queue:/var/lib/rabbitmq",
             *secret_file("gateway_password", fresh["gateway"], 999),
             *secret_file("billing_password", fresh["billing"], 999),
             "-e", "RABBITMQ_GATEWAY_USER=gateway", "-e", "RABBITMQ_BILLING_USER=billing",
             "-e", "RABBITMQ_GATEWAY_PASSWORD_FILE=/run/secrets/gateway_password",
             "-e", "RABBITMQ_BILLING_PASSWORD_FILE=/run/secrets/billing_password"],
            [fresh["gateway"], fresh["billing"]],
        ),
        # The apps against the test stack's own database and broker.
        "inventory-app": (
            [*app_hardening, "--network", backend, "-e", "DB_HOST=inventory-db",
             "-e", f"DB_NAME={stack.env['INVENTORY_DB_NAME']}", "-e", f"DB_USER={stack.env['INVENTORY_DB_USER']}",
             *secret_file("inventory_db_password", values["INVENTORY_DB_PASSWORD"], 10001),
             "-e", "DB_PASSWORD_FILE=/run/secrets/inventory_db_password"],
            list(values.values()),
        ),
        "billing-app": (
            [*app_hardening, "--network", backend, "-e", "DB_HOST=billing-db",
             "-e", f"DB_NAME={stack.env['BILLING_DB_NAME']}", "-e", f"DB_USER={stack.env['BILLING_DB_USER']}",
             *secret_file("app_billing_db_password", values["BILLING_DB_PASSWORD"], 10001),
             "-e", "DB_PASSWORD_FILE=/run/secrets/app_billing_db_password",
             "-e", f"RABBITMQ_BILLING_USER={stack.env['RABBITMQ_BILLING_USER']}",
             *secret_file("app_billing_password", values["RABBITMQ_BILLING_PASSWORD"], 10001),
             "-e", "RABBITMQ_BILLING_PASSWORD_FILE=/run/secrets/app_billing_password"],
            list(values.values()),
        ),
        "api-gateway-app": (
            [*app_hardening, "--network", backend, "-e", "LOG_DIR=/tmp",
             "-e", f"RABBITMQ_GATEWAY_USER={stack.env['RABBITMQ_GATEWAY_USER']}",
             *secret_file("app_gateway_password", values["RABBITMQ_GATEWAY_PASSWORD"], 10001),
             "-e", "RABBITMQ_GATEWAY_PASSWORD_FILE=/run/secrets/app_gateway_password"],
            list(values.values()),
        ),
    }  # fmt: skip
    started = {}
    for service, (options, secret_values) in plans.items():
        name = f"{PREFIX}secfile-{service}"
        run("docker", "run", "--detach", "--name", name, *options, f"{PROJECT}/{service}")
        started[service] = FileSecretContainer(service, name, secret_values)
    return started


def remove_file_secret_containers() -> None:
    for service in ("billing-db", "rabbit-queue", "inventory-app", "billing-app", "api-gateway-app"):
        run("docker", "rm", "--force", "--volumes", f"{PREFIX}secfile-{service}", check=False)
    for volume in ("billing-database", "rabbit-queue"):
        run("docker", "volume", "rm", f"{PREFIX}secfile-{volume}", check=False)


@pytest.fixture(scope="module")
def file_secret_containers(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """All five started at once (they boot in parallel), removed with their volumes at the end."""
    remove_file_secret_containers()
    try:
        yield start_file_secret_containers(stack, tmp_path_factory.mktemp("secrets"))
    finally:
        remove_file_secret_containers()


def wait_until_healthy(name: str, timeout: float = 240) -> None:
    def state() -> str:
        return run("docker", "inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}", name).stdout.strip()

    def settled() -> bool:
        return state() == "running healthy" or not state().startswith("running")

    wait_for(settled, timeout, interval=1, what=f"{name} to become healthy")
    if state() != "running healthy":
        logs = run("docker", "logs", "--tail", "40", name, check=False)
        raise AssertionError(f"{name} is {state()}:\n{logs.stdout}{logs.stderr}")


def health_from_inside(name: str, port: int) -> dict[str, Any]:
    client = (
        "import sys, urllib.request; "
        f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=5).read().decode())"
    )
    return json.loads(run("docker", "exec", name, "python", "-c", client).stdout)


@pytest.mark.parametrize("service", ["billing-db", "rabbit-queue", "inventory-app", "billing-app", "api-gateway-app"])
def test_secrets_given_as_files_are_used_and_never_appear_in_the_environment(
    stack: Stack, file_secret_containers: dict[str, FileSecretContainer], service: str
) -> None:
    container = file_secret_containers[service]
    wait_until_healthy(container.name)
    info = json.loads(run("docker", "inspect", container.name).stdout)[0]
    environment = "\n".join(info["Config"]["Env"])
    assert "_PASSWORD_FILE=/run/secrets/" in environment
    assert not re.search(r"_PASSWORD=", environment), environment
    assert not [v for v in container.secret_values if v in environment], "a secret value is in the environment"
    logs = run("docker", "logs", container.name)
    assert not [v for v in container.secret_values if v in logs.stdout + logs.stderr], "a secret is in the logs"

    if service == "billing-db":
        login = docker_with_env(
            {"PGPASSWORD": container.secret_values[0]},
            "exec", "-e", "PGPASSWORD", container.name,
            "psql", "-X", "-At", "host=127.0.0.1 dbname=billing_db user=billing_app", "-c", "SELECT current_user",
        )  # fmt: skip
        assert login.stdout.strip() == "billing_app", login.stderr
    elif service == "rabbit-queue":
        gateway_password, billing_password = container.secret_values
        outcomes = broker_probe(
            stack,
            [
                {"user": "gateway", "password": gateway_password, "action": "connect"},
                {"user": "billing", "password": billing_password, "action": "connect"},
                {"user": "gateway", "password": billing_password, "action": "connect"},
            ],
            host=container.name,
        )
        assert outcomes[:2] == ["ok", "ok"] and outcomes[2].startswith("login refused"), outcomes
    else:
        health = health_from_inside(container.name, 3000 if service == "api-gateway-app" else 8080)
        assert health["status"] == "ok", health
