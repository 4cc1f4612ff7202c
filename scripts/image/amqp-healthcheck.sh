#!/usr/bin/env bash
# Docker healthcheck of rabbit-queue, cheap (no Erlang VM started):
# 1. the users not configured have been deleted in this container (the marker of broker-bootstrap.sh prune-users);
# 2. AMQP 0-9-1 handshake: sends the protocol header and expects a method frame (Connection.Start) back.
# Usage: amqp-healthcheck.sh [--start-wait=SECONDS] (see healthcheck-start.sh).
set -Eeuo pipefail
export LC_ALL=C

readonly HOST=127.0.0.1 PORT=5672 TIMEOUT_SECONDS=2
readonly FRAME_METHOD=$'\x01'
readonly USERS_PRUNED_MARKER="${RABBITMQ_USERS_PRUNED_MARKER:?set in the image}"

# run_check: a single try, or retries while the container starts.
# shellcheck source=scripts/image/healthcheck-start.sh
source "$(dirname "${BASH_SOURCE[0]}")/healthcheck-start.sh"

check_broker() {
	local frame_type=""
	if [[ ! -e "$USERS_PRUNED_MARKER" ]]; then
		printf 'error: broker users not pruned yet (prune-users program; see docker logs)\n' >&2
		return 1
	fi
	# bash's own "Connection refused" messages are replaced by one error line.
	{ exec 3<>"/dev/tcp/$HOST/$PORT"; } 2>/dev/null || {
		printf 'error: nothing listens on %s:%s\n' "$HOST" "$PORT" >&2
		return 1
	}
	printf 'AMQP\x00\x00\x09\x01' >&3
	read -r -N 1 -t "$TIMEOUT_SECONDS" -u 3 frame_type || true
	exec 3>&-
	if [[ "$frame_type" != "$FRAME_METHOD" ]]; then
		printf 'error: no AMQP Connection.Start from %s:%s within %ss\n' "$HOST" "$PORT" "$TIMEOUT_SECONDS" >&2
		return 1
	fi
}

main() {
	local start_wait=0
	if [[ "${1:-}" =~ ^--start-wait=([0-9]+)$ ]]; then
		start_wait="${BASH_REMATCH[1]}"
	fi
	run_check "$start_wait" check_broker
}

main "$@"
