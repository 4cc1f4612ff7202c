#!/usr/bin/env bash
# Docker HEALTHCHECK of the PostgreSQL images (exit 0 healthy, 1 unhealthy): the server accepts
# TCP connections and the application role can log in with its password and run a query.
# Settings as for db-bootstrap.sh (VAR or VAR_FILE); the password reaches psql only via PGPASSWORD.
set -Eeuo pipefail

readonly PG_BIN=/usr/lib/postgresql/15/bin

# file_env: VAR from $VAR or from the file named by $VAR_FILE, read exactly as db-bootstrap.sh reads it.
# shellcheck source=scripts/image/file-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/file-env.sh"

main() {
	local var
	for var in APP_DB_NAME APP_DB_USER APP_DB_PASSWORD; do
		file_env "$var"
		[[ -n "${!var:-}" ]] || exit 1
	done
	local name="$APP_DB_NAME" user="$APP_DB_USER" password="$APP_DB_PASSWORD"
	# As the application role: a probe as postgres would be rejected by pg_hba.conf and logged every time.
	"$PG_BIN/pg_isready" --quiet --host=127.0.0.1 --port=5432 --timeout=2 --username="$user" --dbname="$name" || exit 1
	PGPASSWORD="$password" PGCONNECT_TIMEOUT=2 "$PG_BIN/psql" --no-psqlrc --quiet --tuples-only \
		--host=127.0.0.1 --port=5432 --username="$user" --dbname="$name" --command='SELECT 1' >/dev/null || exit 1
}

main "$@"
