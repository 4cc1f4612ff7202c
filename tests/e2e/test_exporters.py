"""The metrics exporters, scraped the way a Prometheus on the backend network would scrape them.

Each database container runs prometheus-postgres-exporter on :9187 beside the server, logged in as the
role `metrics` (pg_monitor and nothing else, no password, the Unix socket only); the broker serves
rabbitmq_prometheus on :15692 with one series per queue. Neither port is published on the host. The
exporter never takes its database down: it rides out a server restart (pg_up 0, then 1) and a crash loop.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass

import pytest

from stack import SERVICES, Stack, fresh_user, internal_http, run, wait_for

pytestmark = pytest.mark.e2e

PG_EXPORTER_PORT = 9187
BROKER_METRICS_PORT = 15692
EXPORTER = "postgres-exporter"  # the supervisor program in the database containers


@dataclass(frozen=True)
class Database:
    service: str
    name_var: str
    user_var: str
    table: str
    app: str  # the app using this database: it scrapes from there, as a neighbour on the backend network


DATABASES = {
    "inventory-db": Database("inventory-db", "INVENTORY_DB_NAME", "INVENTORY_DB_USER", "movies", "inventory-app"),
    "billing-db": Database("billing-db", "BILLING_DB_NAME", "BILLING_DB_USER", "orders", "billing-app"),
}

# name{label="value",...} value   (the Prometheus text format; timestamps are not used by these exporters)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        name, labels, value = match.groups()
        samples.append(Sample(name, dict(_LABEL.findall(labels or "")), float(value)))
    return samples


def find(samples: list[Sample], name: str, **labels: str) -> list[Sample]:
    return [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = find(samples, name, **labels)
    assert len(found) == 1, f"expected one {name}{labels}, found {found}"
    return found[0].value


def scrape(stack: Stack, service: str, port: int, via: str) -> list[Sample]:
    """GET http://<service>:<port>/metrics from inside the container ``via`` (on the backend network)."""
    answer = internal_http(stack, service, "GET", "/metrics", port=port, via=via)
    assert answer.status == 200, (answer.status, answer.body[:500])
    assert answer.headers["content-type"].startswith("text/plain"), answer.headers
    return parse(answer.body.decode())


def scrape_db(stack: Stack, service: str) -> list[Sample]:
    return scrape(stack, service, PG_EXPORTER_PORT, DATABASES[service].app)


def supervised_pid(stack: Stack, service: str, program: str) -> int | None:
    """The pid of a supervisor program's process (starting or running), else None."""
    pid = stack.exec(service, "supervisorctl", "pid", program, check=False).stdout.strip()
    return int(pid) if pid.isdigit() and int(pid) > 0 else None


def container_start(stack: Stack, service: str) -> tuple[str, ...]:
    """What changes if the container is restarted or replaced: its id, start time and restart count."""
    return tuple(stack.inspect(service, "{{.Id}} {{.State.StartedAt}} {{.RestartCount}}").split())


# --- PostgreSQL: the exporter -----------------------------------------------------------------------


@pytest.mark.parametrize("service", DATABASES)
def test_the_database_exporter_answers_on_the_backend_network_with_the_app_database_stats(
    stack: Stack, service: str
) -> None:
    db = DATABASES[service]
    database = stack.env[db.name_var]
    samples = wait_for(
        lambda: (found := scrape_db(stack, service)) and value(found, "pg_up") == 1 and found,
        30,
        what=f"pg_up 1 from {service}:{PG_EXPORTER_PORT}",
    )
    # The collectors the dashboards and alerts use: per-database activity and size, locks, bgwriter.
    assert value(samples, "pg_stat_database_numbackends", datname=database) >= 0
    assert value(samples, "pg_database_size_bytes", datname=database) > 1_000_000
    assert find(samples, "pg_locks_count", datname=database, mode="accesssharelock"), "no pg_locks_count"
    assert value(samples, "pg_stat_bgwriter_buffers_alloc_total") > 0
    assert value(samples, "pg_scrape_collector_success", collector="database") == 1
    assert value(samples, "pg_scrape_collector_success", collector="bgwriter") == 1
    assert value(samples, "pg_exporter_last_scrape_error") == 0
    # The counters follow the app's work: the healthcheck logs in as the app role and commits every 5 s.
    commits = value(samples, "pg_stat_database_xact_commit", datname=database)
    wait_for(
        lambda: value(scrape_db(stack, service), "pg_stat_database_xact_commit", datname=database) > commits,
        30,
        what=f"pg_stat_database_xact_commit{{datname={database!r}}} to grow",
    )


@pytest.mark.parametrize("service", DATABASES)
def test_the_exporter_logs_in_as_metrics_over_the_socket_and_logs_nothing_per_scrape(
    stack: Stack, service: str
) -> None:
    since = str(int(time.time()) - 1)
    for _ in range(3):
        assert value(scrape_db(stack, service), "pg_up") == 1
    # Its session, as PostgreSQL sees it: the metrics role in database postgres, over the socket.
    sessions = stack.psql(
        service,
        "SELECT usename, datname, coalesce(client_addr::text, 'socket') FROM pg_stat_activity "
        "WHERE application_name = 'postgres_exporter'",
    )
    assert sessions and set(sessions.splitlines()) == {"metrics|postgres|socket"}, sessions
    logs = run("docker", "logs", "--since", since, stack.container(service))
    exporter_lines = [line for line in (logs.stdout + logs.stderr).splitlines() if line.startswith("ts=")]
    assert exporter_lines == [], exporter_lines


# --- PostgreSQL: the metrics role ---------------------------------------------------------------------


def assert_metrics_role_has_pg_monitor_and_nothing_else(stack: Stack, service: str) -> None:
    db = DATABASES[service]
    database = stack.env[db.name_var]
    attributes = stack.psql(
        service,
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin, "
        "rolpassword IS NULL FROM pg_authid WHERE rolname = 'metrics'",
    )
    assert attributes == "f|f|f|f|f|t|t", "super|createdb|createrole|replication|bypassrls|login|no password = " + (
        attributes or "(no such role)"
    )
    member_of = stack.psql(
        service,
        "SELECT string_agg(roleid::regrole::text || CASE WHEN admin_option THEN ' (admin)' ELSE '' END, ',') "
        "FROM pg_auth_members WHERE member = 'metrics'::regrole",
    )
    assert member_of == "pg_monitor"
    # No right on any table of the application's database (its own table by name, and every other one).
    assert stack.psql(service, f"SELECT has_table_privilege('metrics', '{db.table}', 'SELECT')") == "f"
    privileged = stack.psql(
        service,
        "SELECT string_agg(format('%I.%I', schemaname, tablename), ',') FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND has_table_privilege("
        "'metrics', format('%I.%I', schemaname, tablename), 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')",
    )
    assert privileged == "", f"metrics has rights on {privileged}"
    assert stack.psql(service, f"SELECT has_database_privilege('metrics', '{database}', 'CONNECT')") == "f"
    assert stack.psql(service, "SELECT count(*) FROM pg_class WHERE relowner = 'metrics'::regrole") == "0"


@pytest.mark.parametrize("service", DATABASES)
def test_the_metrics_role_has_pg_monitor_and_nothing_else(stack: Stack, service: str) -> None:
    assert_metrics_role_has_pg_monitor_and_nothing_else(stack, service)


def socket_login(stack: Stack, service: str, user: str, database: str) -> subprocess.CompletedProcess[str]:
    """psql over the Unix socket as the postgres OS user (the exporter's way in), as ``user``."""
    return stack.exec(
        service, "psql", "-X", "-w", "-At", "-h", "/run/postgresql", "-U", user, "-d", database,
        "-c", "SELECT current_user", user="postgres", check=False,
    )  # fmt: skip


@pytest.mark.parametrize("service", DATABASES)
def test_the_metrics_role_logs_in_only_over_the_socket_into_database_postgres(stack: Stack, service: str) -> None:
    db = DATABASES[service]
    database = stack.env[db.name_var]
    allowed = socket_login(stack, service, "metrics", "postgres")
    assert (allowed.returncode, allowed.stdout.strip()) == (0, "metrics"), allowed.stderr
    # Not into the application's database, even over the socket: it cannot read a row there.
    app_database = socket_login(stack, service, "metrics", database)
    assert app_database.returncode != 0 and "pg_hba.conf rejects connection" in app_database.stderr
    # Over TCP, from inside the container and from a neighbour: refused by pg_hba.conf, no password asked.
    other = "billing-db" if service == "inventory-db" else "inventory-db"
    for client, host in ((service, "127.0.0.1"), (other, service)):
        tcp = stack.exec(
            client, "psql", "-X", "-w", "-h", host, "-U", "metrics", "-d", "postgres", "-c", "SELECT 1", check=False
        )
        assert tcp.returncode != 0, f"metrics logged in over TCP from {client} to {host}"
        assert "pg_hba.conf rejects connection" in tcp.stderr and 'user "metrics"' in tcp.stderr, tcp.stderr


def test_a_restart_of_the_server_resets_the_metrics_role_and_the_exporter_rides_it_out(stack: Stack) -> None:
    """An existing volume: the role is put back to exactly its rights at the next start, whatever was
    granted meanwhile; the exporter stays up through the restart, reporting pg_up 0, then 1."""
    service = "inventory-db"
    db = DATABASES[service]
    app_user = stack.env[db.user_var]
    before = container_start(stack, service)
    exporter_pid = supervised_pid(stack, service, EXPORTER)
    assert exporter_pid is not None
    stack.psql(
        service,
        f'GRANT SELECT ON {db.table} TO metrics; GRANT "{app_user}" TO metrics; GRANT pg_read_all_data TO metrics;'
        " GRANT pg_monitor TO metrics WITH ADMIN OPTION; ALTER ROLE metrics CREATEDB CREATEROLE PASSWORD 'drifted';",
    )
    assert stack.psql(service, f"SELECT has_table_privilege('metrics', '{db.table}', 'SELECT')") == "t"
    try:
        stack.exec(service, "supervisorctl", "stop", "postgres")
        down = scrape_db(stack, service)
        assert value(down, "pg_up") == 0 and value(down, "pg_exporter_last_scrape_error") == 1
        assert supervised_pid(stack, service, EXPORTER) == exporter_pid
    finally:
        stack.exec(service, "supervisorctl", "start", "postgres", check=False)
        stack.wait_healthy(service)
    wait_for(lambda: value(scrape_db(stack, service), "pg_up") == 1, 30, what="pg_up 1 after the restart")
    assert supervised_pid(stack, service, EXPORTER) == exporter_pid, "the exporter was restarted"
    assert container_start(stack, service) == before, "the container was restarted"
    assert_metrics_role_has_pg_monitor_and_nothing_else(stack, service)


# Kills the exporter each time supervisor starts it, within its startsecs, for $2 seconds.
CRASH_LOOP = r"""
end=$(( $(date +%s) + $2 ))
while [ "$(date +%s)" -lt "$end" ]; do
    pid="$(supervisorctl pid "$1" 2>/dev/null)" || true
    case "$pid" in ''|0|*[!0-9]*) ;; *) kill -KILL "$pid" 2>/dev/null || true ;; esac
    sleep 0.1
done
"""


def test_an_exporter_that_dies_on_every_start_never_takes_the_database_down(stack: Stack) -> None:
    """Other programs go FATAL after 4 failed starts and the container is restarted; the exporter keeps
    being retried (startretries=1000) and the database keeps serving."""
    service = "billing-db"
    before = container_start(stack, service)
    server_pid = supervised_pid(stack, service, "postgres")
    since = str(int(time.time()) - 1)
    # About 6 failed starts in 22 s (back-off 1 s, 2 s, 3 s...): more than the 4 that make another program FATAL.
    stack.exec(service, "sh", "-c", CRASH_LOOP, "crash-loop", EXPORTER, "22")
    supervisord = run("docker", "logs", "--since", since, stack.container(service)).stdout
    failed_starts = supervisord.count(f"exited: {EXPORTER} (terminated by SIGKILL; not expected)")
    assert failed_starts >= 5, supervisord[-3000:]
    assert "entered FATAL state" not in supervisord and "gave up" not in supervisord, supervisord[-3000:]
    assert supervised_pid(stack, service, "postgres") == server_pid
    assert container_start(stack, service) == before, "the container was restarted"
    user = fresh_user()
    order = {"user_id": user, "number_of_items": 1, "total_amount": "1"}
    assert stack.http("POST", "/api/billing", order).status == 200
    wait_for(lambda: len(stack.order_rows(user_id=user)) == 1, 60, what="an order stored during the exporter's retries")
    # Back by itself at its next retry (the back-off is now about 7 s).
    wait_for(lambda: supervised_pid(stack, service, EXPORTER), 60, interval=1, what="the exporter to run again")
    wait_for(lambda: value(scrape_db(stack, service), "pg_up") == 1, 30, what="pg_up 1 from the restarted exporter")


# --- RabbitMQ -------------------------------------------------------------------------------------------


def scrape_broker(stack: Stack) -> list[Sample]:
    return scrape(stack, "rabbit-queue", BROKER_METRICS_PORT, "billing-app")


def queue_metrics(samples: list[Sample], queue: str) -> dict[str, float]:
    names = ("rabbitmq_queue_messages", "rabbitmq_queue_messages_ready", "rabbitmq_queue_consumers")
    return {name: value(samples, name, vhost="/", queue=queue) for name in names}


def test_the_prometheus_plugin_is_enabled_and_the_management_plugin_is_not_even_installed(stack: Stack) -> None:
    # --enabled lists the explicitly enabled plugins (/etc/rabbitmq/enabled_plugins, written at build time).
    explicit = stack.exec("rabbit-queue", "rabbitmq-plugins", "-q", "list", "--enabled", "--minimal").stdout
    assert explicit.split() == ["rabbitmq_prometheus"]
    listing = stack.exec("rabbit-queue", "rabbitmq-plugins", "-q", "list", "rabbitmq_").stdout
    # E: explicitly enabled, e: enabled as a dependency, *: running. The image unpacks no other plugin.
    plugins = {name: state for state, name in re.findall(r"^\[(..)\] (\S+)", listing, re.M)}
    assert plugins == {"rabbitmq_management_agent": "e*", "rabbitmq_prometheus": "E*", "rabbitmq_web_dispatch": "e*"}, (
        listing
    )
    enable = stack.exec("rabbit-queue", "rabbitmq-plugins", "enable", "rabbitmq_management", check=False)
    assert enable.returncode != 0 and "plugins_not_found" in enable.stdout + enable.stderr, enable
    # The root filesystem is read-only: nobody enables another plugin at run time, even one that is there.
    enable = stack.exec("rabbit-queue", "rabbitmq-plugins", "enable", "rabbitmq_web_dispatch", check=False)
    assert enable.returncode != 0 and "erofs" in enable.stdout + enable.stderr, enable.stdout + enable.stderr


def test_the_broker_answers_per_queue_metrics_for_the_billing_queue_and_its_dead_letters(stack: Stack) -> None:
    queue = stack.env["RABBITMQ_QUEUE"]
    samples = scrape_broker(stack)
    main, dead = queue_metrics(samples, queue), queue_metrics(samples, f"{queue}.dlq")
    assert main["rabbitmq_queue_consumers"] >= 1, main  # billing-app's consumer
    assert dead["rabbitmq_queue_consumers"] == 0, dead
    assert main["rabbitmq_queue_messages"] >= main["rabbitmq_queue_messages_ready"] >= 0, main


def test_the_queue_metrics_show_a_backlog_while_billing_app_is_not_consuming(stack: Stack) -> None:
    """What the alerts watch: orders waiting with no consumer, then drained once it is back."""
    queue = stack.env["RABBITMQ_QUEUE"]
    user = fresh_user()
    stack.exec("billing-app", "supervisorctl", "stop", "consumer")
    try:
        for _ in range(2):
            order = {"user_id": user, "number_of_items": 1, "total_amount": "2.50"}
            assert stack.http("POST", "/api/billing", order).status == 200
        # The plugin reads the queue's counters, which are refreshed every few seconds.
        backlog = wait_for(
            lambda: (m := queue_metrics(scrape_broker(stack), queue))["rabbitmq_queue_messages_ready"] >= 2 and m,
            60,
            interval=1,
            what=f"rabbitmq_queue_messages_ready{{queue={queue!r}}} >= 2",
        )
        assert backlog["rabbitmq_queue_consumers"] == 0 and backlog["rabbitmq_queue_messages"] >= 2, backlog
    finally:
        stack.exec("billing-app", "supervisorctl", "start", "consumer")
    wait_for(lambda: len(stack.order_rows(user_id=user)) == 2, 60, what="the two orders to be stored")
    wait_for(
        lambda: (
            (m := queue_metrics(scrape_broker(stack), queue))["rabbitmq_queue_messages"] == 0
            and m["rabbitmq_queue_consumers"] >= 1
        ),
        60,
        interval=1,
        what=f"rabbitmq_queue_messages{{queue={queue!r}}} 0 with a consumer",
    )


# --- nothing is published --------------------------------------------------------------------------------


def test_no_metrics_port_is_published_on_the_host(stack: Stack) -> None:
    metrics_ports = {"inventory-db": "9187/tcp", "billing-db": "9187/tcp", "rabbit-queue": "15692/tcp"}
    for service in SERVICES:
        info = json.loads(run("docker", "inspect", stack.container(service)).stdout)[0]
        bindings = info["HostConfig"]["PortBindings"] or {}
        published = run("docker", "port", stack.container(service)).stdout
        for port in ("9187/tcp", "15692/tcp"):
            assert port not in bindings and port.split("/")[0] not in published, f"{service} publishes {port}"
        if service in metrics_ports:
            # Exposed (documented, reachable on the backend network), with no host binding.
            port = metrics_ports[service]
            assert port in info["Config"]["ExposedPorts"], info["Config"]["ExposedPorts"]
            assert info["NetworkSettings"]["Ports"].get(port) is None, info["NetworkSettings"]["Ports"]
