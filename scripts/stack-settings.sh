# shellcheck shell=bash
# Sourced by backup.sh and restore.sh: which stack they work on, and what it is called.
# Settings (environment):
#   PWC_ENV_FILE          the stack's .env, for INVENTORY_DB_NAME and BILLING_DB_NAME (default: .env of the repository)
#   PWC_CONTAINER_PREFIX  prefix of the container names (default none: inventory-db, billing-db, rabbit-queue)
#   PWC_BACKUP_ROOT       where backups go (default: backups/ in the repository)
# The sourcing script defines die() and REPO_DIR.

# A setting as the stack sees it: the environment first, then .env, then the default.
env_setting() {
	local name="$1" default="$2" value="${!1:-}"
	if [[ -z "$value" && -f "$ENV_FILE" ]]; then
		value="$(sed -n "s/^${name}=//p" "$ENV_FILE" | tail -n 1)"
	fi
	value="${value:-$default}"
	[[ "$value" =~ ^[a-z_][a-z0-9_]{0,56}$ ]] || die "$name must be a lowercase identifier, got \"$value\""
	printf '%s' "$value"
}

# The names are used by the sourcing scripts.
# shellcheck disable=SC2034
load_settings() {
	ENV_FILE="${PWC_ENV_FILE:-$REPO_DIR/.env}"
	INVENTORY_DB_NAME="$(env_setting INVENTORY_DB_NAME movies_db)"
	BILLING_DB_NAME="$(env_setting BILLING_DB_NAME billing_db)"
	INVENTORY_DB="${PWC_CONTAINER_PREFIX:-}inventory-db"
	BILLING_DB="${PWC_CONTAINER_PREFIX:-}billing-db"
	BROKER="${PWC_CONTAINER_PREFIX:-}rabbit-queue"
	BACKUP_ROOT="${PWC_BACKUP_ROOT:-$REPO_DIR/backups}"
}

require_running() {
	local container
	for container in "$@"; do
		[[ "$(docker inspect --format '{{.State.Running}}' "$container" 2>/dev/null)" == true ]] \
			|| die "container $container is not running (start the stack and wait until it is healthy: scripts/up.sh)"
	done
}
