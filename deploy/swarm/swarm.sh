#!/usr/bin/env bash
# Runs play-with-containers on Docker Swarm (deploy/swarm/stack.yml; docs/swarm.md explains the design).
#   deploy/swarm/swarm.sh up                  initialise a single-node swarm if this engine is in none,
#                                             label the storage node, create the secrets from .env, deploy
#                                             the stack, wait until every service has converged, print the state
#   deploy/swarm/swarm.sh down [--volumes]    remove the stack; --volumes also removes its volumes (all data)
#                                             and its secrets
#   deploy/swarm/swarm.sh status              services, running tasks and their health
# Settings (environment): PWC_ENV_FILE (default .env), PWC_STACK (stack name, default pwc),
#   PWC_IMAGE_PREFIX (prepended to image names, default none), GATEWAY_REPLICAS (default: one per
#   node, at most 3), SWARM_ADVERTISE_ADDR (for swarm init, default 127.0.0.1), PWC_SWARM_TIMEOUT
#   (seconds to wait for convergence, default 300).
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
readonly STACK_FILE=deploy/swarm/stack.yml
readonly ENV_FILE="${PWC_ENV_FILE:-.env}"
readonly STACK="${PWC_STACK:-pwc}"
readonly IMAGE_PREFIX="${PWC_IMAGE_PREFIX:-}"
readonly TIMEOUT="${PWC_SWARM_TIMEOUT:-300}"
readonly IMAGES=(inventory-db billing-db rabbit-queue inventory-app billing-app api-gateway-app)
# .env variable -> secret (named <stack>_<secret>); the stack file declares the same four.
readonly -A SECRETS=(
	[INVENTORY_DB_PASSWORD]=inventory_db_password
	[BILLING_DB_PASSWORD]=billing_db_password
	[RABBITMQ_GATEWAY_PASSWORD]=rabbitmq_gateway_password
	[RABBITMQ_BILLING_PASSWORD]=rabbitmq_billing_password
)
readonly STORAGE_LABEL=pwc.storage

log() { printf 'swarm: %s\n' "$*"; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

usage() {
	printf 'usage: %s up | down [--volumes] | status\n' "$0" >&2
	exit 2
}

# Reads NAME=value lines of the env file into the environment (the file is data, never sourced).
# Every variable of .env.example must have a value (but Compose's own, which a swarm does not read):
# all missing ones are named at once.
load_env() {
	local line name value missing=()
	[[ -f "$ENV_FILE" ]] || die "$ENV_FILE not found: copy .env.example to .env and fill it in (or run scripts/up.sh once)"
	while IFS= read -r line || [[ -n "$line" ]]; do
		[[ "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
		name="${BASH_REMATCH[1]}"
		value="${BASH_REMATCH[2]}"
		# One level of matching quotes, as compose reads .env.
		if [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]]; then
			value="${BASH_REMATCH[1]}"
		fi
		export "$name=$value"
	done <"$ENV_FILE"
	while IFS= read -r name; do
		[[ -n "${!name:-}" ]] || missing+=("$name")
	done < <(grep -Eo '^[A-Z_]+=' .env.example | tr -d '=' | grep -v '^COMPOSE_')
	((${#missing[@]} == 0)) || die "$ENV_FILE lacks values for: ${missing[*]} (see .env.example)"
}

swarm_state() { docker info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}'; }

ensure_swarm() {
	local state
	state="$(swarm_state)"
	case "$state" in
	"inactive "*)
		log "this engine is in no swarm: initialising a single-node swarm"
		docker swarm init --advertise-addr "${SWARM_ADVERTISE_ADDR:-127.0.0.1}" >/dev/null
		;;
	"active true") ;;
	"active false") die "this engine is a swarm worker: run this script on a manager" ;;
	*) die "the swarm is not usable here (state: $state)" ;;
	esac
}

# The images must exist on every node that runs their tasks (or in a registry: PWC_IMAGE_PREFIX).
check_images() {
	local image missing=()
	for image in "${IMAGES[@]}"; do
		docker image inspect "${IMAGE_PREFIX}${image}" >/dev/null 2>&1 || missing+=("${IMAGE_PREFIX}${image}")
	done
	((${#missing[@]} == 0)) || die "missing images: ${missing[*]} (build them first: docker compose build)"
}

# Databases and broker keep their data in local volumes: they run on the node with this label.
label_storage_node() {
	if [[ -z "$(docker node ls --quiet --filter "node.label=${STORAGE_LABEL}=true")" ]]; then
		log "labelling this node ${STORAGE_LABEL}=true (databases and broker run on it)"
		docker node update --label-add "${STORAGE_LABEL}=true" "$(docker info --format '{{.Swarm.NodeID}}')" >/dev/null
	fi
}

# Swarm secrets are immutable: an existing one is kept (docs/swarm.md: changing a password).
create_secrets() {
	local var name
	for var in "${!SECRETS[@]}"; do
		name="${STACK}_${SECRETS[$var]}"
		if docker secret inspect "$name" >/dev/null 2>&1; then
			continue
		fi
		printf '%s' "${!var}" | docker secret create --label "pwc.stack=${STACK}" "$name" - >/dev/null
		log "created secret $name (from $var)"
	done
}

# One gateway per node that can run tasks (each binds the published port on its node), at most 3.
gateway_replicas() {
	local nodes
	nodes="$(docker node ls --format '{{.Status}} {{.Availability}}' | grep -c '^Ready Active$' || true)"
	printf '%d' "$((nodes < 3 ? nodes : 3))"
}

deploy() {
	export PWC_STACK="$STACK" PWC_IMAGE_PREFIX="$IMAGE_PREFIX"
	export GATEWAY_REPLICAS="${GATEWAY_REPLICAS:-$(gateway_replicas)}"
	log "deploying stack $STACK (gateway replicas: $GATEWAY_REPLICAS, port ${GATEWAY_PORT:-3000})"
	# The images are local: no registry is asked for digests.
	docker stack deploy --prune --resolve-image never --compose-file "$STACK_FILE" "$STACK"
}

stack_services() { docker stack services --quiet "$STACK"; }

# One line per service that has not converged yet: wrong number of running tasks, or an update
# (or rollback) still in progress. A paused update is a failure.
unconverged() {
	local id
	for id in $(stack_services); do
		docker service inspect --format \
			'{{.Spec.Name}} {{with .Spec.Mode.Replicated}}{{.Replicas}}{{else}}global{{end}} {{with .UpdateStatus}}{{.State}}{{else}}none{{end}}' \
			"$id" | {
			read -r name desired update
			# A task with a healthcheck is "Running" only once it is healthy.
			running="$(docker service ps --filter desired-state=running --format '{{.CurrentState}}' "$name" |
				grep -c '^Running' || true)"
			case "$update" in
			paused | rollback_paused) printf 'FAILED %s: update %s\n' "$name" "$update" ;;
			updating | rollback_started) printf '%s: update %s\n' "$name" "$update" ;;
			*) [[ "$desired" == global || "$running" == "$desired" ]] || printf '%s: %s/%s running\n' "$name" "$running" "$desired" ;;
			esac
		}
	done
}

wait_converged() {
	local started=$SECONDS pending="" stable=0
	log "waiting for every service to converge (at most ${TIMEOUT}s)"
	while ((stable < 2)); do
		pending="$(unconverged)"
		if [[ -z "$pending" ]]; then
			stable=$((stable + 1))
		else
			stable=0
			if grep -q '^FAILED' <<<"$pending" || ((SECONDS - started > TIMEOUT)); then
				printf '%s\n' "$pending" >&2
				status >&2
				die "stack $STACK did not converge"
			fi
		fi
		sleep 2
	done
	log "stack $STACK converged in $((SECONDS - started))s"
}

status() {
	docker stack services "$STACK"
	printf '\n'
	docker stack ps --filter desired-state=running \
		--format 'table {{.Name}}\t{{.Node}}\t{{.CurrentState}}\t{{.Error}}' "$STACK"
}

up() {
	load_env
	ensure_swarm
	check_images
	label_storage_node
	create_secrets
	deploy
	wait_converged
	printf '\n'
	status
	printf '\nplay-with-containers is up on the swarm: http://localhost:%s/api/movies\n' "${GATEWAY_PORT:-3000}"
}

wait_gone() {
	local what="$1" started=$SECONDS
	shift
	while [[ -n "$("$@")" ]]; do
		((SECONDS - started < TIMEOUT)) || die "$what of stack $STACK still present after ${TIMEOUT}s"
		sleep 1
	done
}

down() {
	local remove_volumes=""
	case "${1:-}" in
	"") ;;
	--volumes) remove_volumes=1 ;;
	*) usage ;;
	esac
	if [[ -n "$(stack_services 2>/dev/null)" ]]; then
		docker stack rm "$STACK"
	fi
	local label="label=com.docker.stack.namespace=$STACK"
	wait_gone containers docker ps --all --quiet --filter "$label"
	wait_gone networks docker network ls --quiet --filter "$label"
	if [[ -n "$remove_volumes" ]]; then
		wait_gone volumes remove_volumes "$label"
		local secrets
		secrets="$(docker secret ls --quiet --filter "label=pwc.stack=$STACK")"
		if [[ -n "$secrets" ]]; then
			# shellcheck disable=SC2086 # one word per id
			docker secret rm $secrets >/dev/null
		fi
		log "removed the volumes and secrets of stack $STACK"
	else
		log "stack $STACK removed; its volumes and secrets are kept (down --volumes removes them)"
	fi
}

# Prints the volumes that could not be removed yet (a just-stopped container may still hold one).
remove_volumes() {
	local volume
	for volume in $(docker volume ls --quiet --filter "$1"); do
		docker volume rm "$volume" >/dev/null 2>&1 || printf '%s\n' "$volume"
	done
}

main() {
	command -v docker >/dev/null || die "docker is not installed"
	case "${1:-}" in
	up) up ;;
	down) down "${@:2}" ;;
	status) status ;;
	*) usage ;;
	esac
}

main "$@"
