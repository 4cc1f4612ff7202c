#!/usr/bin/env bash
# Docker HEALTHCHECK of the PostgreSQL images (exit 0 healthy, 1 unhealthy): the server accepts
# TCP connections and the application role can log in with its password and run a query.
# Every probe checks the TCP port; the login, which costs the container ~25 ms of CPU (psql loading
# libpq, a backend started for it), at most every LOGIN_RECHECK_SECONDS, and at every probe once one has
# failed: a server that stops listening fails the very next probe; a refused login fails a probe within
# 15 s, and every probe after it until a login passes again.
# Settings as for db-bootstrap.sh (VAR or VAR_FILE); the password reaches psql only via PGPASSWORD.
# Usage: db-healthcheck.sh [--start-wait=SECONDS] (see healthcheck-start.sh).
set -Eeuo pipefail

readonly PG_BIN=/usr/lib/postgresql/15/bin
# Each try is bounded as a probe was before --start-wait (HEALTHCHECK --timeout=3s).
readonly TRY_SECONDS=3
# When the application role last logged in for a probe (seconds since the epoch), in the container's own /tmp.
readonly LOGIN_CHECKED_FILE=/tmp/.healthcheck-login-ok LOGIN_RECHECK_SECONDS=15

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
	local checked=0
	{ read -r checked <"$LOGIN_CHECKED_FILE"; } 2>/dev/null || true
	if [[ "$checked" =~ ^[0-9]+$ ]] && ((checked <= EPOCHSECONDS && EPOCHSECONDS - checked < LOGIN_RECHECK_SECONDS)); then
		return 0
	fi
	# As the application role: a probe as postgres would be rejected by pg_hba.conf and logged every time.
	PGPASSWORD="$password" PGCONNECT_TIMEOUT=2 timeout --kill-after=1 "$TRY_SECONDS" "$PG_BIN/psql" --no-psqlrc \
		--quiet --tuples-only --host=127.0.0.1 --port=5432 --username="$user" --dbname="$name" \
		--command='SELECT 1' >/dev/null || return 1
	# Not written (read-only /tmp, say): every probe logs in, as it did before.
	{ printf '%s\n' "$EPOCHSECONDS" >"$LOGIN_CHECKED_FILE"; } 2>/dev/null || true
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
