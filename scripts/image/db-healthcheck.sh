#!/usr/bin/env bash
# Docker HEALTHCHECK of the PostgreSQL images (exit 0 healthy, 1 unhealthy): the server accepts
# TCP connections and the application role can log in with its password and run a query.
# Settings as for db-bootstrap.sh (VAR or VAR_FILE); the password reaches psql only via PGPASSWORD.
# Usage: db-healthcheck.sh [--start-wait=SECONDS] (see healthcheck-start.sh).
set -Eeuo pipefail

readonly PG_BIN=/usr/lib/postgresql/15/bin
# Each try is bounded as a probe was before --start-wait (HEALTHCHECK --timeout=3s).
readonly TRY_SECONDS=3

# file_env: VAR from $VAR or from the file named by $VAR_FILE, read exactly as db-bootstrap.sh reads it.
# shellcheck source=scripts/image/file-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/file-env.sh"
# run_check: a single try, or retries while the container starts.
# shellcheck source=scripts/image/healthcheck-start.sh
source "$(dirname "${BASH_SOURCE[0]}")/healthcheck-start.sh"

check_database() {
	local name="$1" user="$2" password="$3"
	# TCP opens only once the server proper runs (db-bootstrap.sh's maintenance server listens on its socket
	# only): bash's /dev/tcp says so without starting a client.
	{ exec 3<>/dev/tcp/127.0.0.1/5432; } 2>/dev/null || {
		printf 'unhealthy: nothing listens on 127.0.0.1:5432\n' >&2
		return 1
	}
	exec 3>&-
	# As the application role: a probe as postgres would be rejected by pg_hba.conf and logged every time.
	PGPASSWORD="$password" PGCONNECT_TIMEOUT=2 timeout --kill-after=1 "$TRY_SECONDS" "$PG_BIN/psql" --no-psqlrc \
		--quiet --tuples-only --host=127.0.0.1 --port=5432 --username="$user" --dbname="$name" \
		--command='SELECT 1' >/dev/null
}

main() {
	local var start_wait=0
	if [[ "${1:-}" =~ ^--start-wait=([0-9]+)$ ]]; then
		start_wait="${BASH_REMATCH[1]}"
	fi
	for var in APP_DB_NAME APP_DB_USER APP_DB_PASSWORD; do
		file_env "$var"
		[[ -n "${!var:-}" ]] || exit 1
	done
	run_check "$start_wait" check_database "$APP_DB_NAME" "$APP_DB_USER" "$APP_DB_PASSWORD"
}

main "$@"
