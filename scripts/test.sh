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

main() {
	if [[ ! -x "$VENV/bin/pytest" ]] || ! cmp -s tests/requirements.txt "$VENV/requirements.txt"; then
		python3 -m venv "$VENV"
		# The apps' own pinned dependencies (hash-checked) for the unit tests, then the test tools.
		"$VENV/bin/pip" install --quiet --disable-pip-version-check --require-hashes -r apps/requirements.txt
		"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
		cp tests/requirements.txt "$VENV/requirements.txt"
	fi
	install_newman
	scripts/base-image.sh
	PATH="$PWD/$VENV/bin:$PATH" exec "$VENV/bin/pytest" "$@"
}

main "$@"
