#!/usr/bin/env bash
# The benchmark: brings up a separate bench stack (compose project pwc-bench, port 3500), measures
# it against the physical limits of this machine, writes bench/results/<date>.json and prints a
# markdown table. Never touches a user's stack. Needs root (nsenter, to load internal apps from
# inside the backend network) and wrk (installed with apt-get when missing). About 12 minutes.
# Options are passed to bench/bench.py (--help).
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

main() {
	[[ $EUID -eq 0 ]] || die "run as root: the benchmark enters container network namespaces with nsenter"
	if ! command -v wrk >/dev/null; then
		apt-get update -qq && apt-get install -y -qq --no-install-recommends wrk >/dev/null
	fi
	command -v nsenter >/dev/null || die "nsenter (util-linux) is missing"
	scripts/base-image.sh
	exec python3 bench/bench.py "$@"
}

main "$@"
