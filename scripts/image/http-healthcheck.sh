#!/usr/bin/env bash
# Container healthcheck of the apps (GET /health) and of prometheus (GET /-/ready): healthy only on 200.
# Plain bash (/dev/tcp), so a check costs a few milliseconds and no interpreter start-up.
# Usage: http-healthcheck.sh [--start-wait=SECONDS] PORT [PATH] (--start-wait: see healthcheck-start.sh).
set -Eeuo pipefail

# run_check: a single try, or retries while the container starts.
# shellcheck source=scripts/image/healthcheck-start.sh
source "$(dirname "${BASH_SOURCE[0]}")/healthcheck-start.sh"

check_http() {
	local port="$1" path="$2" status_line=""
	{ exec 3<>"/dev/tcp/127.0.0.1/${port}"; } 2>/dev/null || {
		printf 'unhealthy: nothing listens on port %s\n' "$port" >&2
		return 1
	}
	printf 'GET %s HTTP/1.0\r\nHost: localhost\r\nX-Request-ID: healthcheck\r\n\r\n' "$path" >&3
	IFS= read -r -t 3 status_line <&3 || true
	exec 3<&-
	[[ "$status_line" == "HTTP/1."?" 200 "* ]] || {
		printf 'unhealthy: %s\n' "${status_line:-no answer}" >&2
		return 1
	}
}

main() {
	local start_wait=0
	if [[ "${1:-}" =~ ^--start-wait=([0-9]+)$ ]]; then
		start_wait="${BASH_REMATCH[1]}"
		shift
	fi
	local port="${1:?usage: http-healthcheck.sh [--start-wait=SECONDS] PORT [PATH]}" path="${2:-/health}"
	run_check "$start_wait" check_http "$port" "$path"
}

main "$@"
