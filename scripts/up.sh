#!/usr/bin/env bash
# Runs the stack on a fresh Docker host (Docker Engine + Compose v2):
#   .env created from .env.example with random passwords if missing, checked for empty values,
#   the base image made available, then `docker compose up --build -d --wait`.
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

random_secret() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }

create_env_file() {
	local line name value
	umask 077
	while IFS= read -r line || [[ -n "$line" ]]; do
		name="${line%%=*}"
		value="${line#*=}"
		if [[ "$line" != \#* && "$line" == *=* && -z "$value" && "$name" == *_PASSWORD ]]; then
			line="${name}=$(random_secret)"
		fi
		printf '%s\n' "$line"
	done <.env.example >.env
	printf 'created .env with generated passwords (keep it private; it is git-ignored)\n'
}

# Every variable of .env.example must have a value in .env: name all the missing ones at once.
check_env_file() {
	local name missing=()
	while IFS= read -r name; do
		grep -Eq "^${name}=.+" .env || missing+=("$name")
	done < <(grep -Eo '^[A-Z_]+=' .env.example | tr -d '=')
	((${#missing[@]} == 0)) || die ".env lacks values for: ${missing[*]} (see .env.example)"
}

main() {
	command -v docker >/dev/null || die "docker is not installed"
	docker compose version >/dev/null 2>&1 || die "Docker Compose v2 is not installed (docker compose ...)"
	[[ -f .env ]] || create_env_file
	check_env_file
	scripts/base-image.sh
	docker compose up --build --detach --wait --wait-timeout 300 "$@"
	local port
	port="$(grep -E '^GATEWAY_PORT=' .env | cut -d= -f2)"
	printf '\nplay-with-containers is up: http://localhost:%s/api/movies (docs: http://localhost:%s/docs)\n' \
		"${port:-3000}" "${port:-3000}"
}

main "$@"
