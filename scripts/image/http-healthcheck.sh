#!/usr/bin/env bash
# Container healthcheck of the apps (GET /health) and of prometheus (GET /-/ready): healthy only on 200.
# Plain bash (/dev/tcp), so a check costs a few milliseconds and no interpreter start-up.
set -Eeuo pipefail

main() {
	local port="${1:?usage: http-healthcheck.sh PORT [PATH]}" path="${2:-/health}" status_line
	exec 3<>"/dev/tcp/127.0.0.1/${port}"
	printf 'GET %s HTTP/1.0\r\nHost: localhost\r\nX-Request-ID: healthcheck\r\n\r\n' "$path" >&3
	IFS= read -r -t 3 status_line <&3
	exec 3<&-
	[[ "$status_line" == "HTTP/1."?" 200 "* ]] || {
		printf 'unhealthy: %s\n' "${status_line:-no answer}" >&2
		exit 1
	}
}

main "$@"
