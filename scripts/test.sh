#!/usr/bin/env bash
# Runs the whole test suite: linters, unit tests, then end-to-end tests against a separate
# test stack (compose project pwc-test, own containers, volumes and port 3300), removed at the end.
# Needs Docker Engine + Compose v2 and python3 (with venv). Extra arguments go to pytest.
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
readonly VENV="${PWC_TEST_VENV:-.venv-test}"
readonly NEWMAN_VERSION="6.2.2"

# newman (npm) runs the Postman collection in the end-to-end tests; installed once into the test venv.
install_newman() {
	local bin="$VENV/node/node_modules/.bin/newman"
	if [[ -x "$bin" && "$("$bin" --version 2>/dev/null)" == "$NEWMAN_VERSION" ]]; then
		return
	fi
	if ! command -v npm >/dev/null; then
		printf 'warning: npm not found, the Postman collection test will be skipped\n' >&2
		return
	fi
	npm install --prefix "$VENV/node" --no-audit --no-fund --loglevel=error "newman@${NEWMAN_VERSION}"
}

# promtool checks and unit-tests the Prometheus configuration and alert rules (tests/lint/test_prometheus.py).
# Only that binary is taken from Debian's prometheus package (no service installed): downloaded by apt,
# which checks it against the signed package lists, and extracted into the test venv once.
install_promtool() {
	local bin="$VENV/bin/promtool" dir
	local -a apt_options=()
	if [[ -x "$bin" ]] || command -v promtool >/dev/null; then
		return
	fi
	if ! command -v apt-get >/dev/null; then
		printf 'warning: promtool not found and no apt-get to fetch it: the Prometheus lint tests will fail\n' >&2
		return
	fi
	# As root, apt downloads as its _apt user, which cannot write into this private directory.
	((EUID != 0)) || apt_options=(-o APT::Sandbox::User=root)
	dir="$(mktemp -d)"
	if (cd "$dir" && apt-get download -qq "${apt_options[@]}" prometheus); then
		dpkg-deb --fsys-tarfile "$dir"/prometheus_*.deb | tar -x -C "$dir" ./usr/bin/promtool
		install -m 0755 "$dir/usr/bin/promtool" "$bin"
	else
		printf 'warning: apt-get download prometheus failed (run apt-get update first?): no promtool,' >&2
		printf ' the Prometheus lint tests will fail\n' >&2
	fi
	rm -rf "$dir"
}

main() {
	if [[ ! -x "$VENV/bin/pytest" ]] || ! cmp -s tests/requirements.txt "$VENV/requirements.txt"; then
		python3 -m venv "$VENV"
		# The apps' own pinned dependencies (hash-checked) for the unit tests, then the test tools.
		"$VENV/bin/pip" install --quiet --disable-pip-version-check --require-hashes -r apps/requirements.txt
		"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
		cp tests/requirements.txt "$VENV/requirements.txt"
	fi
	install_newman
	install_promtool
	scripts/base-image.sh
	# PWC_TEST_VENV may be relative (to the repository) or absolute.
	PATH="$(realpath "$VENV")/bin:$PATH" exec "$VENV/bin/pytest" "$@"
}

main "$@"
