#!/usr/bin/env bash
# Entrypoint of the PostgreSQL images (inventory-db, billing-db), run by supervisor as postgres.
#   empty volume    -> initdb, create the owner role, the application role and the database,
#                      with the application role's rights on every table to come
#   existing volume -> maintenance before any client can connect: the application role's password
#                      is set from APP_DB_PASSWORD (so a password changed in .env takes effect)
#   both            -> the schema migrations not yet applied are applied, in order (see apply_migrations);
#                      the metrics exporter's role is created if missing and reset to its rights (ensure_metrics_role)
# then exec the postgres server with /etc/postgresql/postgresql.conf.
# Database and role names are fixed when the volume is initialised; passwords follow the settings.
# Settings: APP_DB_NAME, APP_DB_USER, APP_DB_PASSWORD, each also as *_FILE (Docker secrets).
set -Eeuo pipefail

readonly PG_BIN=/usr/lib/postgresql/15/bin
readonly CONFIG_FILE=/etc/postgresql/postgresql.conf
readonly MIGRATIONS_DIR=/etc/postgresql/migrations
readonly SOCKET_DIR=/run/postgresql

log() { printf 'db-bootstrap: %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# file_env: VAR from $VAR or from the file named by $VAR_FILE (shared with the other bootstrap script).
# shellcheck source=scripts/image/file-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/file-env.sh"

# Names become SQL identifiers and "<name>_owner" must fit PostgreSQL's 63-byte limit.
check_identifier() {
	local var="$1"
	[[ "${!var}" =~ ^[a-z_][a-z0-9_]{0,56}$ ]] \
		|| die "$var must be a lowercase identifier (a-z, 0-9, _; at most 57 characters)"
}

load_settings() {
	local var missing=()
	for var in APP_DB_NAME APP_DB_USER APP_DB_PASSWORD; do
		file_env "$var"
		[[ -n "${!var:-}" ]] || missing+=("$var")
	done
	if ((${#missing[@]} > 0)); then
		die "missing required environment variables (or their *_FILE variants): ${missing[*]}"
	fi
	check_identifier APP_DB_NAME
	check_identifier APP_DB_USER
	[[ "$APP_DB_USER" != postgres ]] || die "APP_DB_USER must not be the superuser postgres"
	[[ "$APP_DB_USER" != metrics ]] || die "APP_DB_USER must not be metrics (the metrics exporter's role)"
}

# Data directory of the temporary server while it runs (for stop_leftover_server).
temp_server_dir=""

start_temporary_server() {
	temp_server_dir="$1"
	# Unix socket only: nobody can connect over the network before initialisation or maintenance is complete.
	# No failing statement in the log: it could be the CREATE ROLE or ALTER ROLE carrying the password.
	# The timeout leaves room for crash recovery, which happens here after the container was killed.
	"$PG_BIN/pg_ctl" --pgdata="$temp_server_dir" --wait --timeout=300 --silent \
		--options="-c listen_addresses='' -c unix_socket_directories=$SOCKET_DIR -c log_min_error_statement=panic" start
}

stop_temporary_server() {
	"$PG_BIN/pg_ctl" --pgdata="$temp_server_dir" --wait --silent --mode=fast stop
	temp_server_dir=""
}

# EXIT trap: a failed initialisation or maintenance must not leave a server holding the socket for the next attempt.
stop_leftover_server() {
	if [[ -n "$temp_server_dir" ]]; then
		stop_temporary_server || true
	fi
}

# psql as the postgres superuser over the socket of the temporary server, in database $1, with the
# settings as variables (:db, :owner, :app). Passwords go through the environment (\getenv), never a command line.
psql_in() {
	local database="$1"
	shift
	"$PG_BIN/psql" --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --host="$SOCKET_DIR" \
		--username=postgres --dbname="$database" \
		--set=db="$APP_DB_NAME" --set=owner="${APP_DB_NAME}_owner" --set=app="$APP_DB_USER" "$@"
}

temp_psql() { psql_in postgres "$@"; }

create_database() {
	temp_psql <<-'SQL'
	\getenv app_password APP_DB_PASSWORD
	CREATE ROLE :"owner" NOLOGIN;
	CREATE ROLE :"app" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'app_password';
	CREATE DATABASE :"db" OWNER :"owner";
	REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
	GRANT CONNECT ON DATABASE :"db" TO :"app";

	\connect :"db"
	-- Tables belong to the owner role (the migrations run as it), so the application role cannot drop or
	-- alter them; it may read and write every table and sequence the owner creates.
	SET ROLE :"owner";
	ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
	ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO :"app";
	SQL
}

# Everything happens in a sibling directory that is renamed into place only when complete,
# so an interrupted initialisation is never mistaken for a finished one.
initialise() {
	local pgdata="$1" tmp="$1.init"
	log "initialising $pgdata (database $APP_DB_NAME, role $APP_DB_USER)"
	rm -rf "$tmp"
	"$PG_BIN/initdb" --pgdata="$tmp" --username=postgres --auth-local=peer --auth-host=scram-sha-256 \
		--encoding=UTF8 --locale=C.UTF-8 >/dev/null
	start_temporary_server "$tmp"
	create_database
	apply_migrations
	ensure_metrics_role
	stop_temporary_server
	# -T: replace an empty $pgdata directory instead of moving into it.
	mv -T "$tmp" "$pgdata"
	log "initialisation complete"
}

# A volume initialised with other names: say so, rather than start a server that refuses every login.
check_names_exist() {
	local found role_found db_found
	local fixed="names are fixed when the volume is initialised: set the original name back,"
	fixed+=" or start afresh with docker compose down -v (deletes the data)"
	found="$(temp_psql --tuples-only --no-align --field-separator=' ' <<-'SQL'
	SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app'), EXISTS (SELECT FROM pg_database WHERE datname = :'db');
	SQL
	)"
	read -r role_found db_found <<<"$found"
	[[ "$role_found" == t ]] || die "role \"$APP_DB_USER\" (APP_DB_USER) does not exist in this volume; $fixed"
	[[ "$db_found" == t ]] || die "database \"$APP_DB_NAME\" (APP_DB_NAME) does not exist in this volume; $fixed"
}

# The role's password follows APP_DB_PASSWORD, so changing it in .env is enough.
set_app_password() {
	temp_psql <<-'SQL'
	\getenv app_password APP_DB_PASSWORD
	ALTER ROLE :"app" PASSWORD :'app_password';
	SQL
}

# The role of the metrics exporter (config/supervisor/postgres-exporter.conf), created if missing and reset at
# every start, after the migrations, to exactly this: LOGIN without a password (peer authentication over the
# socket, as the postgres OS user, into database postgres only: pg_hba.conf, pg_ident.conf), no other
# attribute, a member of pg_monitor (statistics and settings views, no table data) and of nothing else, with
# no privilege granted to it and owning nothing, in database postgres, in the application database and on
# shared objects. The other databases (templates) are out of its reach (pg_hba.conf).
ensure_metrics_role() {
	temp_psql <<-'SQL'
	SET client_min_messages = warning;
	SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'metrics') AS metrics_missing \gset
	\if :metrics_missing
	CREATE ROLE metrics;
	\endif
	-- INHERIT: it uses pg_monitor's rights without SET ROLE. The exporter needs 2 connections.
	ALTER ROLE metrics LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT
	    CONNECTION LIMIT 5 PASSWORD NULL;
	ALTER ROLE metrics RESET ALL;
	SELECT format('REVOKE %I FROM metrics', pg_get_userbyid(roleid)) FROM pg_auth_members
	 WHERE member = 'metrics'::regrole AND (roleid <> 'pg_monitor'::regrole OR admin_option) \gexec
	SELECT 'GRANT pg_monitor TO metrics' WHERE NOT EXISTS (
	    SELECT FROM pg_auth_members WHERE member = 'metrics'::regrole AND roleid = 'pg_monitor'::regrole) \gexec
	-- Whatever it might own is given to postgres; DROP OWNED then revokes every privilege granted to it here
	-- and on shared objects (databases), and its default privileges.
	REASSIGN OWNED BY metrics TO postgres;
	DROP OWNED BY metrics;
	SQL
	psql_in "$APP_DB_NAME" <<-'SQL'
	SET client_min_messages = warning;
	REASSIGN OWNED BY metrics TO :"owner";
	DROP OWNED BY metrics;
	SQL
}

# Schema changes are versioned files, $MIGRATIONS_DIR/NNN_description.sql (config/<db>/migrations/ in the
# repository), applied in order: each once, in its own transaction, as the owner role, and recorded in
# admin.schema_migrations with its SHA-256. A migration that fails is rolled back and stops the start, naming its
# file; an applied migration whose file has changed since is refused (the change belongs in a new one).
apply_migrations() {
	local file name checksum recorded applied=()
	psql_in "$APP_DB_NAME" <<-'SQL'
	SET ROLE :"owner";
	-- Outside the public schema: the application role cannot even see it, and the default privileges
	-- (for the public schema) do not apply to it, also when a backup is restored.
	CREATE SCHEMA IF NOT EXISTS admin;
	CREATE TABLE IF NOT EXISTS admin.schema_migrations (
	    name       text PRIMARY KEY,
	    checksum   text NOT NULL,
	    applied_at timestamptz NOT NULL DEFAULT now()
	);
	SQL
	for file in "$MIGRATIONS_DIR"/*.sql; do
		name="$(basename "$file")"
		[[ "$name" =~ ^[0-9]{3}_[a-z0-9_]+\.sql$ ]] \
			|| die "migration $name: the file name must be NNN_description.sql (3 digits, then a-z, 0-9, _)"
		checksum="$(sha256sum "$file" | cut -d' ' -f1)"
		recorded="$(psql_in "$APP_DB_NAME" --tuples-only --no-align --set=name="$name" <<-'SQL'
		SELECT checksum FROM admin.schema_migrations WHERE name = :'name';
		SQL
		)"
		if [[ -n "$recorded" ]]; then
			[[ "$recorded" == "$checksum" ]] || die "migration $name was applied with SHA-256 $recorded, but the" \
				"file now has $checksum: an applied migration must not change; put the change in a new migration"
			continue
		fi
		psql_in "$APP_DB_NAME" --single-transaction --set=file="$file" --set=name="$name" \
			--set=checksum="$checksum" <<-'SQL' || die "migration $name failed (the error is above): rolled back, nothing of it was applied"
		SET ROLE :"owner";
		\i :file
		INSERT INTO admin.schema_migrations (name, checksum) VALUES (:'name', :'checksum');
		SQL
		applied+=("$name")
	done
	log "schema migrations: ${#applied[@]} applied now${applied[*]:+ (${applied[*]})}"
}

# Run at every start of an existing volume, while only the local socket is open. Each step is idempotent.
maintenance_steps() {
	check_names_exist
	set_app_password
	apply_migrations
	ensure_metrics_role
}

maintain() {
	local pgdata="$1"
	start_temporary_server "$pgdata"
	maintenance_steps
	stop_temporary_server
	log "maintenance complete: password of role $APP_DB_USER set from APP_DB_PASSWORD, role metrics reset to pg_monitor"
}

# After a kill -9 of the container, postmaster.pid stays in the volume. In the new container's PID
# namespace its PID may belong to another live process (supervisord, a healthcheck), and the server
# then refuses to start ("lock file already exists") until PIDs happen to differ: supervisor gives up,
# Docker restarts the container, maybe more than once. A lock file whose PID is not a running postgres
# is stale. (Orphaned backends of a crashed server still stop a second one: the shared memory interlock.)
remove_stale_pid_file() {
	local pid_file="$1/postmaster.pid" pid
	[[ -f "$pid_file" ]] || return 0
	pid="$(head -n 1 "$pid_file")"
	if [[ "$pid" =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null)" == postgres ]]; then
		return 0
	fi
	log "removing stale $pid_file (PID $pid is not a running postgres)"
	rm -f "$pid_file"
}

main() {
	local pgdata
	trap stop_leftover_server EXIT
	load_settings
	# -C prints the configured value and exits; log_min_messages hides LOG chatter such as
	# "skipping missing configuration file" on an empty volume.
	pgdata="$("$PG_BIN/postgres" -c config_file="$CONFIG_FILE" -c log_min_messages=fatal -C data_directory)"
	if [[ -s "$pgdata/PG_VERSION" ]]; then
		log "database already initialised"
		remove_stale_pid_file "$pgdata"
		maintain "$pgdata"
	elif [[ -e "$pgdata" && -n "$(ls -A "$pgdata")" ]]; then
		die "$pgdata is not empty but holds no database (no PG_VERSION); refusing to touch it"
	else
		initialise "$pgdata"
	fi
	# The server does not need the password; keep it out of its environment.
	unset APP_DB_PASSWORD
	exec "$PG_BIN/postgres" -c config_file="$CONFIG_FILE"
}

main "$@"
