# shellcheck shell=bash
# Sourced by the healthchecks (db-, amqp- and http-healthcheck.sh, installed together in /usr/local/bin),
# whose first argument may be --start-wait=SECONDS.
#
# Docker 20.10 runs a container's first probe one interval (5 s) after the container starts, then one
# interval after each probe ends, and has no `start_interval`: a service ready at 6 s would be reported healthy
# at ~10 s, and each level of a start order would add that wait. Probing more often costs CPU all the time
# (each probe is a `docker exec`: ~20 ms of CPU before the check itself runs; see the README). Instead, with
# `--start-wait=SECONDS` (the images' HEALTHCHECK passes it), a probe that finds the service not ready yet,
# while the container has never been healthy and is younger than SECONDS, tries again every 0.25 s, for at
# most START_PROBE_MAX_SECONDS, so the container turns healthy a fraction of a second after the service is
# ready. Once the check has passed in this container (a marker in its private /tmp), and in any case once
# the container is older than SECONDS, every probe is a single try, as without the option: a service going
# down is reported as fast as before. Without the option (e.g. a Kubernetes probe), always a single try.

readonly HEALTHY_ONCE_MARKER=/tmp/.healthcheck-passed
# Below the images' HEALTHCHECK --timeout (30 s: a last try may take 3 s more), which kills a probe still running.
readonly START_PROBE_MAX_SECONDS=20 START_RETRY_SECONDS=0.25

# Seconds since the container started: the age of PID 1 (tini).
container_age() {
	local uptime stat ticks
	read -r uptime _ </proc/uptime
	stat="$(</proc/1/stat)"
	# Fields after "pid (comm) ": starttime, in clock ticks since boot, is the 20th of them.
	read -r -a ticks <<<"${stat##*) }"
	printf '%s\n' $((${uptime%.*} - ticks[19] / $(getconf CLK_TCK)))
}

# run_check START_WAIT CHECK [ARG...]: runs the function CHECK (it prints why it fails on stderr), retrying
# as described above when START_WAIT (seconds, 0 for none) allows it. Succeeds when CHECK does.
run_check() {
	local start_wait="$1" deadline=$((SECONDS + START_PROBE_MAX_SECONDS))
	shift
	if ((start_wait == 0)) || [[ -e "$HEALTHY_ONCE_MARKER" ]]; then
		"$@"
		return
	fi
	# Only the last try's reason is kept (Docker shows it in `docker inspect`).
	until "$@" 2>/dev/null; do
		if ((SECONDS >= deadline || $(container_age) >= start_wait)); then
			"$@"
			return
		fi
		sleep "$START_RETRY_SECONDS"
	done
	: >"$HEALTHY_ONCE_MARKER" 2>/dev/null || true
}
