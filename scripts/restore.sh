#!/usr/bin/env bash
# Restores a backup written by scripts/backup.sh into the running stack (also a fresh one after
# `docker compose down -v`, once it is up and healthy):  scripts/restore.sh backups/<timestamp>
# 1. Checks before touching anything, and refuses the whole backup on the first problem: every file
#    present, its SHA-256 as in SHA256SUMS, each dump a complete PostgreSQL archive (read to the end by
#    pg_restore inside its container) of the database it is restored into, the broker definitions valid JSON.
# 2. Each database: one pg_restore --single-transaction --clean --if-exists, as the database's owner role.
#    PostgreSQL's DDL is transactional, so the drop, the re-creation and the data load commit together or
#    not at all: a database is either fully restored or unchanged. The apps keep their connections (their
#    requests wait for the restore's locks). Tables and sequences end owned by <db>_owner with the
#    application role's grants, as the database bootstrap makes them; roles and their passwords are not in
#    a dump, they stay as the bootstrap set them from .env.
# 3. The broker: exchanges, queues, bindings, policies and vhosts are imported (existing ones are kept,
#    queued messages too). Users and permissions are not: the broker bootstrap sets them from .env at
#    every boot, and an old password hash would lock the apps out until the next restart.
# Settings (environment): see scripts/stack-settings.sh.
set -Eeuo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_DIR
readonly BACKUP_FILES=(inventory-db.dump billing-db.dump rabbit-queue.definitions.json)
# In the broker's /tmp (a tmpfs; its root filesystem is read-only).
readonly STAGED_DEFINITIONS=/tmp/restore-definitions.json

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
log() { printf 'restore: %s\n' "$*"; }

# env_setting, load_settings, require_running: shared with the other backup script.
# shellcheck source=scripts/stack-settings.sh
source "$REPO_DIR/scripts/stack-settings.sh"

require_accepting_connections() {
	local container
	for container in "$@"; do
		docker exec --user postgres "$container" pg_isready --quiet \
			|| die "the database in $container does not accept connections yet (wait until it is healthy)"
	done
}

verify_checksums() {
	local dir="$1" file expected actual
	[[ -d "$dir" ]] || die "$dir is not a directory"
	[[ -f "$dir/SHA256SUMS" ]] || die "$dir/SHA256SUMS is missing: not a complete backup; nothing was restored"
	for file in "${BACKUP_FILES[@]}"; do
		[[ -f "$dir/$file" ]] || die "$dir/$file is missing: not a complete backup; nothing was restored"
		expected="$(awk -v name="$file" '$2 == name { print $1 }' "$dir/SHA256SUMS")"
		[[ -n "$expected" ]] || die "$dir/SHA256SUMS has no checksum for $file; nothing was restored"
		actual="$(sha256sum <"$dir/$file" | cut -d ' ' -f 1)"
		[[ "$actual" == "$expected" ]] \
			|| die "$dir/$file does not match its checksum in SHA256SUMS (damaged backup); nothing was restored"
	done
}

# pg_restore without a database only writes the SQL (here to /dev/null): it reads the whole archive.
# Its table of contents names the database it was dumped from: the dumps must not be swapped.
verify_archive() {
	local container="$1" dump="$2" database="$3" problem dumped_from
	if ! problem="$(docker exec --interactive --user postgres "$container" pg_restore --file=/dev/null 2>&1 <"$dump")"; then
		die "$dump is not a readable PostgreSQL archive (${problem//$'\n'/ }); nothing was restored"
	fi
	dumped_from="$(docker exec --interactive --user postgres "$container" pg_restore --list <"$dump" \
		| sed -n 's/^;[[:space:]]*dbname: //p')"
	[[ "$dumped_from" == "$database" ]] \
		|| die "$dump is a dump of database \"$dumped_from\", not $database; nothing was restored"
}

# Keeps the topology of the exported definitions, validating them as JSON, in a file of the broker's /tmp.
stage_definitions() {
	local definitions="$1" problem
	if ! problem="$(docker exec --interactive "$BROKER" python3 -c '
import json, os, sys
definitions = json.load(sys.stdin)
if not isinstance(definitions, dict) or "queues" not in definitions:
    sys.exit("no queues in it")
keep = ("vhosts", "exchanges", "queues", "bindings", "policies", "parameters")
with os.fdopen(os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
    json.dump({key: definitions[key] for key in keep if key in definitions}, out)
' "$STAGED_DEFINITIONS" 2>&1 <"$definitions")"; then
		die "$definitions is not a RabbitMQ definitions file (${problem##*$'\n'}); nothing was restored"
	fi
}

remove_staged_definitions() {
	docker exec "$BROKER" rm -f "$STAGED_DEFINITIONS" || true
}

# Names of the parts already restored, for the message should a later part fail.
restored=()
restored_so_far() {
	if ((${#restored[@]} > 0)); then
		printf 'already restored: %s' "${restored[*]}"
	else
		printf 'nothing was restored'
	fi
}

restore_database() {
	local container="$1" database="$2" dump="$3"
	log "restoring $database in $container"
	docker exec --interactive --user postgres "$container" pg_restore --dbname="$database" \
		--role="${database}_owner" --single-transaction --clean --if-exists --exit-on-error <"$dump" \
		|| die "restoring $database failed (see above); it was rolled back, $database is unchanged; $(restored_so_far)"
	restored+=("$database")
}

import_definitions() {
	log "importing the broker topology into $BROKER"
	docker exec "$BROKER" rabbitmqctl --quiet import_definitions "$STAGED_DEFINITIONS" \
		|| die "importing the broker definitions into $BROKER failed (see above); $(restored_so_far)"
	restored+=("broker topology")
}

main() {
	(($# == 1)) || die "usage: scripts/restore.sh <backup directory, e.g. backups/20250101T000000Z>"
	local dir="${1%/}"
	load_settings
	verify_checksums "$dir"
	require_running "$INVENTORY_DB" "$BILLING_DB" "$BROKER"
	require_accepting_connections "$INVENTORY_DB" "$BILLING_DB"
	verify_archive "$INVENTORY_DB" "$dir/inventory-db.dump" "$INVENTORY_DB_NAME"
	verify_archive "$BILLING_DB" "$dir/billing-db.dump" "$BILLING_DB_NAME"
	trap remove_staged_definitions EXIT
	stage_definitions "$dir/rabbit-queue.definitions.json"
	# Everything checked: from here on the stack is changed.
	restore_database "$INVENTORY_DB" "$INVENTORY_DB_NAME" "$dir/inventory-db.dump"
	restore_database "$BILLING_DB" "$BILLING_DB_NAME" "$dir/billing-db.dump"
	import_definitions
	log "complete: $dir restored into $INVENTORY_DB, $BILLING_DB and $BROKER"
}

main "$@"
