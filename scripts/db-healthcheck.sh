#!/usr/bin/env bash
# Docker HEALTHCHECK of the PostgreSQL images (exit 0 healthy, 1 unhealthy): the server accepts
# TCP connections and the application role can log in with its password and run a query.
# Settings as for db-bootstrap.sh (VAR or VAR_FILE); the password reaches psql only via PGPASSWORD.
set -Eeuo pipefail

readonly PG_BIN=/usr/lib/postgresql/15/bin

# Prints VAR, or the content of the file named by VAR_FILE; fails if neither is set.
setting() {
	local var="$1" file_var="${1}_FILE"
	if [[ -n "${!file_var:-}" ]]; then
		cat -- "${!file_var}"
	else
		printf '%s' "${!var:?}"
	fi
}

main() {
	local name user password
	name="$(setting APP_DB_NAME)" && user="$(setting APP_DB_USER)" && password="$(setting APP_DB_PASSWORD)" || exit 1
	# As the application role: a probe as postgres would be rejected by pg_hba.conf and logged every time.
	"$PG_BIN/pg_isready" --quiet --host=127.0.0.1 --port=5432 --timeout=2 --username="$user" --dbname="$name" || exit 1
	PGPASSWORD="$password" PGCONNECT_TIMEOUT=2 "$PG_BIN/psql" --no-psqlrc --quiet --tuples-only \
		--host=127.0.0.1 --port=5432 --username="$user" --dbname="$name" --command='SELECT 1' >/dev/null || exit 1
}

main "$@"
