#!/usr/bin/env bash
# A three-node swarm simulated on one Docker host, to see the stack scale out (docs/swarm.md):
#   deploy/swarm/nodes.sh up       three privileged containers running their own dockerd
#                                  (deploy/swarm/node/Dockerfile), joined as a swarm of three managers;
#                                  the images copied into them with docker save | docker load (no
#                                  registry); the stack deployed from node1 by deploy/swarm/swarm.sh (so
#                                  one gateway per node); node<N>'s gateway port (GATEWAY_PORT) is
#                                  published on the host's 127.0.0.1:<PWC_NODES_PORT_BASE + N>
#   deploy/swarm/nodes.sh status   the nodes and the stack
#   deploy/swarm/nodes.sh down     remove the nodes with everything in them, their network and image
# Settings (environment): PWC_NODES_PREFIX (names of the node containers, network and image, default
#   pwc-nodes), PWC_NODES_PORT_BASE (default 3410), and for the stack PWC_ENV_FILE (default .env),
#   PWC_STACK (default pwc), PWC_IMAGE_PREFIX (the images to copy, default none).
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
readonly PREFIX="${PWC_NODES_PREFIX:-pwc-nodes}"
readonly PORT_BASE="${PWC_NODES_PORT_BASE:-3410}"
readonly ENV_FILE="${PWC_ENV_FILE:-.env}"
readonly STACK="${PWC_STACK:-pwc}"
readonly IMAGE_PREFIX="${PWC_IMAGE_PREFIX:-}"
readonly NODE_IMAGE="$PREFIX/node"
readonly NETWORK="$PREFIX"
readonly NODES=(node1 node2 node3)
# Databases and broker run on node1 (swarm.sh labels it); the apps may run anywhere.
readonly STATEFUL_IMAGES=(inventory-db billing-db rabbit-queue)
readonly APP_IMAGES=(inventory-app billing-app api-gateway-app)
# What --privileged grants, spelt out: this engine's own capability bounding set lacks CAP_SYS_RESOURCE,
# so --privileged (which asks for every capability) fails here, while this works everywhere.
readonly PRIVILEGED=(
	--cap-add ALL --cap-drop SYS_RESOURCE
	--security-opt seccomp=unconfined --security-opt apparmor=unconfined --security-opt systempaths=unconfined
	--device-cgroup-rule 'a *:* rwm' --volume /sys/fs/cgroup:/sys/fs/cgroup
)

log() { printf 'nodes: %s\n' "$*"; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

container() { printf '%s-%s' "$PREFIX" "$1"; }
on() {
	local node="$1"
	shift
	docker exec "$(container "$node")" "$@"
}

wait_engine() {
	local node="$1" _
	for _ in $(seq 60); do
		on "$node" docker info >/dev/null 2>&1 && return
		sleep 1
	done
	docker logs --tail 20 "$(container "$node")" >&2
	die "the engine of $node did not start in 60 s"
}

start_nodes() {
	local i node env_path port
	env_path="$(realpath "$ENV_FILE")"
	# The gateway publishes GATEWAY_PORT (from the env file) on each node.
	port="$(sed -n 's/^GATEWAY_PORT=//p' "$ENV_FILE" | tail -n 1)"
	port="${port:-3000}"
	docker build --quiet --tag "$NODE_IMAGE" deploy/swarm/node >/dev/null
	docker network inspect "$NETWORK" >/dev/null 2>&1 || docker network create "$NETWORK" >/dev/null
	for i in "${!NODES[@]}"; do
		node="${NODES[$i]}"
		if [[ "$(docker container inspect --format '{{.State.Running}}' "$(container "$node")" 2>/dev/null)" == true ]]; then
			continue
		fi
		docker rm --force --volumes "$(container "$node")" >/dev/null 2>&1 || true
		# The node's dockerd manages namespaces, cgroups, mounts, iptables and overlay networks: the node
		# is privileged in all but name (see PRIVILEGED); its containers' cgroups go under their own parent.
		docker run --detach "${PRIVILEGED[@]}" --name "$(container "$node")" --hostname "$node" \
			--network "$NETWORK" --publish "127.0.0.1:$((PORT_BASE + i + 1)):$port" \
			--volume "$PWD:/src:ro" --volume "$env_path:/run/pwc.env:ro" \
			"$NODE_IMAGE" --cgroup-parent="/$(container "$node")" >/dev/null
		log "started $node (its port $port on 127.0.0.1:$((PORT_BASE + i + 1)))"
	done
	for node in "${NODES[@]}"; do
		wait_engine "$node"
	done
}

form_swarm() {
	local node token address
	if [[ "$(on node1 docker info --format '{{.Swarm.LocalNodeState}}')" != active ]]; then
		on node1 docker swarm init --advertise-addr eth0 >/dev/null
	fi
	token="$(on node1 docker swarm join-token --quiet manager)"
	address="$(docker container inspect --format "{{(index .NetworkSettings.Networks \"$NETWORK\").IPAddress}}" "$(container node1)")"
	for node in "${NODES[@]:1}"; do
		if [[ "$(on "$node" docker info --format '{{.Swarm.LocalNodeState}}')" != active ]]; then
			on "$node" docker swarm join --token "$token" --advertise-addr eth0 "$address:2377" >/dev/null
		fi
	done
	log "swarm of ${#NODES[@]} managers formed"
}

# No registry: each node gets the images its tasks may need.
copy_images() {
	local node images=()
	for node in "${NODES[@]}"; do
		images=("${APP_IMAGES[@]/#/$IMAGE_PREFIX}")
		if [[ "$node" == node1 ]]; then
			images+=("${STATEFUL_IMAGES[@]/#/$IMAGE_PREFIX}")
		fi
		docker save "${images[@]}" | docker exec --interactive "$(container "$node")" docker load --quiet >/dev/null
		log "copied ${#images[@]} images into $node"
	done
}

deploy() {
	docker exec --env PWC_ENV_FILE=/run/pwc.env --env PWC_STACK="$STACK" --env PWC_IMAGE_PREFIX="$IMAGE_PREFIX" \
		"$(container node1)" /src/deploy/swarm/swarm.sh up
}

status() {
	on node1 docker node ls
	printf '\n'
	docker exec --env PWC_STACK="$STACK" "$(container node1)" /src/deploy/swarm/swarm.sh status
}

# The (now empty) cgroups that a node's engine made under its --cgroup-parent, deepest first.
remove_cgroups() {
	local dir
	for dir in /sys/fs/cgroup/*/"$1" /sys/fs/cgroup/"$1"; do
		if [[ -d "$dir" ]]; then
			find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
		fi
	done
}

down() {
	local node
	for node in "${NODES[@]}"; do
		docker rm --force --volumes "$(container "$node")" >/dev/null 2>&1 || true
		remove_cgroups "$(container "$node")"
	done
	docker network rm "$NETWORK" >/dev/null 2>&1 || true
	docker rmi "$NODE_IMAGE" >/dev/null 2>&1 || true
	log "removed the nodes, their network and image"
}

main() {
	command -v docker >/dev/null || die "docker is not installed"
	case "${1:-}" in
	up)
		[[ -f "$ENV_FILE" ]] || die "$ENV_FILE not found (see .env.example)"
		start_nodes
		form_swarm
		copy_images
		deploy
		;;
	status) status ;;
	down) down ;;
	*)
		printf 'usage: %s up | status | down\n' "$0" >&2
		exit 2
		;;
	esac
}

main "$@"
