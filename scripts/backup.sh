#!/usr/bin/env bash
# Online backup of the running stack into backups/<UTC timestamp>/ (git-ignored, private: mode 700):
#   inventory-db.dump, billing-db.dump  pg_dump -Fc of each database: one consistent snapshot per database,
#                                       taken while the apps keep running; run inside the container as the
#                                       postgres OS user over the local socket (peer authentication)
#   rabbit-queue.definitions.json       the broker's users (password hashes), permissions, vhosts,
#                                       exchanges, queues, bindings and policies; not the queued messages
#   SHA256SUMS                          checked by scripts/restore.sh (or by hand: sha256sum -c SHA256SUMS)
# Everything is written into a temporary directory, renamed into place only when complete.
# Settings (environment): see scripts/stack-settings.sh.
set -Eeuo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_DIR

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
log() { printf 'backup: %s\n' "$*"; }

# env_setting, load_settings, require_running: shared with the other backup script.
# shellcheck source=scripts/stack-settings.sh
source "$REPO_DIR/scripts/stack-settings.sh"

# Temporary directory of the backup being written, removed by the EXIT trap unless it was renamed into place.
work_dir=""
remove_work_dir() {
	if [[ -n "$work_dir" ]]; then
		rm -rf -- "$work_dir"
	fi
}

dump_database() {
	local container="$1" database="$2" file="$3"
	log "dumping $database from $container"
	docker exec --user postgres "$container" pg_dump --format=custom --dbname="$database" >"$work_dir/$file" \
		|| die "pg_dump of $database in $container failed; no backup was written"
}

export_definitions() {
	log "exporting the broker definitions from $BROKER"
	docker exec "$BROKER" rabbitmqctl --quiet export_definitions - >"$work_dir/rabbit-queue.definitions.json" \
		|| die "exporting the definitions of $BROKER failed; no backup was written"
}

# Queued messages are not part of the backup: say so when some are waiting.
warn_about_queued_messages() {
	local name messages
	while read -r name messages; do
		if [[ "$messages" =~ ^[0-9]+$ ]] && ((messages > 0)); then
			printf 'warning: %s messages wait in queue %s; they are not in this backup\n' "$messages" "$name" >&2
		fi
	done < <(docker exec "$BROKER" rabbitmqctl --quiet list_queues --no-table-headers name messages)
}

main() {
	local stamp target
	load_settings
	require_running "$INVENTORY_DB" "$BILLING_DB" "$BROKER"
	# The broker definitions hold password hashes: nothing written here is readable by others.
	umask 077
	mkdir -p -- "$BACKUP_ROOT"
	stamp="$(date -u +%Y%m%dT%H%M%SZ)"
	target="$BACKUP_ROOT/$stamp"
	[[ ! -e "$target" ]] || die "$target already exists"
	trap remove_work_dir EXIT
	work_dir="$(mktemp -d "$BACKUP_ROOT/.incomplete-$stamp.XXXXXX")"
	dump_database "$INVENTORY_DB" "$INVENTORY_DB_NAME" inventory-db.dump
	dump_database "$BILLING_DB" "$BILLING_DB_NAME" billing-db.dump
	export_definitions
	(cd "$work_dir" && sha256sum -- inventory-db.dump billing-db.dump rabbit-queue.definitions.json >SHA256SUMS)
	sync -- "$work_dir"/*
	# -T: never moves it into a directory of that name created meanwhile.
	mv -T -- "$work_dir" "$target"
	work_dir=""
	warn_about_queued_messages
	log "complete: $target"
}

main "$@"
