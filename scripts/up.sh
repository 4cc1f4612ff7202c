#!/usr/bin/env bash
# Runs the stack on a fresh Docker host (Docker Engine + Compose v2, or Compose v1.29 `docker-compose`):
#   .env created from .env.example with random passwords if missing (or completed with the defaults of
#   settings added since), checked for empty values, the base image made available, then
#   `docker compose up --build -d --wait` (v1 has no --wait: `up --build -d`, then health polled).
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
COMPOSE=()

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

# A setting of .env.example with a default that .env does not mention (one added after .env was made,
# e.g. COMPOSE_PROJECT_NAME) is appended to .env; empty ones (passwords) are left to check_env_file.
add_new_settings() {
	local line
	[[ -z "$(tail -c 1 .env)" ]] || printf '\n' >>.env
	while IFS= read -r line; do
		if ! grep -q "^${line%%=*}=" .env; then
			printf '%s\n' "$line" >>.env
			printf 'added %s to .env (a setting newer than your .env)\n' "$line"
		fi
	done < <(grep -E '^[A-Z_]+=.+' .env.example)
}

# Every variable of .env.example must have a value in .env: name all the missing ones at once.
check_env_file() {
	local name missing=()
	while IFS= read -r name; do
		grep -Eq "^${name}=.+" .env || missing+=("$name")
	done < <(grep -Eo '^[A-Z_]+=' .env.example | tr -d '=')
	((${#missing[@]} == 0)) || die ".env lacks values for: ${missing[*]} (see .env.example)"
}

# Compose v2 (plugin or standalone binary), else v1.29 (Debian 12's and Ubuntu 22.04's docker-compose).
find_compose() {
	if docker compose version >/dev/null 2>&1; then
		COMPOSE=(docker compose)
	elif command -v docker-compose >/dev/null; then
		COMPOSE=(docker-compose)
	else
		die "Docker Compose is not installed (docker compose, or docker-compose)"
	fi
}

# Compose v1 has no `up --wait`: poll the health of the project's containers, 300 s at most.
wait_healthy() {
	local ids health _
	for _ in $(seq 150); do
		ids="$("${COMPOSE[@]}" ps -q)"
		# shellcheck disable=SC2086 # one container id per word
		health="$(docker inspect -f '{{.State.Health.Status}}' $ids 2>/dev/null | sort -u || true)"
		[[ -n "$ids" && "$health" == healthy ]] && return
		sleep 2
	done
	"${COMPOSE[@]}" ps >&2
	die "not every service is healthy after 300 s (see ${COMPOSE[*]} logs)"
}

start_stack() {
	if [[ "$("${COMPOSE[@]}" version --short)" == 1.* ]]; then
		"${COMPOSE[@]}" up --build --detach "$@"
		wait_healthy
	else
		"${COMPOSE[@]}" up --build --detach --wait --wait-timeout 300 "$@"
	fi
}

main() {
	command -v docker >/dev/null || die "docker is not installed"
	find_compose
	if [[ -f .env ]]; then add_new_settings; else create_env_file; fi
	check_env_file
	scripts/base-image.sh
	start_stack "$@"
	local port
	port="$(grep -E '^GATEWAY_PORT=' .env | cut -d= -f2)"
	printf '\nplay-with-containers is up: http://localhost:%s/api/movies (docs: http://localhost:%s/docs)\n' \
		"${port:-3000}" "${port:-3000}"
}

main "$@"
