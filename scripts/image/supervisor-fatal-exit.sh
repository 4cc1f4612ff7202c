#!/usr/bin/env bash
# supervisord event listener for PROCESS_STATE_FATAL.
# supervisord exits 0 on SIGTERM, which Docker's "on-failure" policy ignores. So on FATAL we stop
# the other programs cleanly, then SIGKILL supervisord: tini (PID 1) exits 137 and Docker restarts
# the container. Protocol: http://supervisord.org/events.html (stdout is reserved for it).
set -Eeuo pipefail

stop_siblings() {
	local names
	# supervisorctl status exits non-zero when any program is not running (the FATAL one is not).
	names="$({ supervisorctl status 2>/dev/null || true; } | awk -v me="$SUPERVISOR_PROCESS_NAME" '$1 != me && $2 == "RUNNING" {print $1}')"
	if [[ -n "$names" ]]; then
		# shellcheck disable=SC2086 # one word per program name
		supervisorctl stop $names >&2 || true
	fi
}

main() {
	local header payload len
	while true; do
		printf 'READY\n'
		IFS= read -r header
		len="${header##*len:}"
		len="${len%% *}"
		payload="$(head -c "$len")"
		printf 'error: supervisor gave up on a program (%s); exiting so Docker restarts the container\n' \
			"$(sed -n 's/.*processname:\([^ ]*\).*/\1/p' <<<"$payload")" >&2
		stop_siblings
		kill -KILL "$PPID"
		printf 'RESULT 2\nOK'
	done
}

main "$@"
