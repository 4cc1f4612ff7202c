#!/usr/bin/env bash
# The broker's two supervisor programs (run as the rabbitmq user), both reading the broker users and
# topology from the environment (passwords also as *_FILE, Docker secrets):
#   broker-bootstrap.sh [server] -> writes the definitions file that rabbitmq.conf imports at every boot
#       (load_definitions), so users, their passwords, permissions, exchanges and queues match .env;
#       importing is idempotent; then execs the RabbitMQ server in the foreground.
#   broker-bootstrap.sh prune-users -> once the broker is up, deletes every user .env does not name (the
#       import adds and updates users, never removes one), then leaves the marker amqp-healthcheck.sh requires.
#       It talks to the broker node with erl_call, never rabbitmqctl: no Erlang VM is started (see broker_eval).
set -Eeuo pipefail

readonly DEFINITIONS_FILE="${RABBITMQ_DEFINITIONS_FILE:-/var/lib/rabbitmq/definitions.json}"
# The real server script: /usr/sbin/rabbitmq-server is Debian's wrapper, which redirects output to files.
readonly RABBITMQ_SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
# Present once prune-users has succeeded in this container (/tmp is per container); set in the Dockerfile.
readonly USERS_PRUNED_MARKER="${RABBITMQ_USERS_PRUNED_MARKER:?set in the image}"
readonly AMQP_PORT=5672 BOOT_TIMEOUT_SECONDS=300
# Erlang/OTP's distribution client (C, part of the erlang-base package the server runs on).
readonly ERL_CALL=/usr/lib/erlang/bin/erl_call

log() { printf 'broker-bootstrap: %s\n' "$*"; }

error() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# file_env: VAR from $VAR or from the file named by $VAR_FILE (shared with the other bootstrap script).
# shellcheck source=scripts/image/file-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/file-env.sh"

load_environment() {
	local var missing=()
	file_env RABBITMQ_GATEWAY_PASSWORD
	file_env RABBITMQ_BILLING_PASSWORD
	for var in RABBITMQ_GATEWAY_USER RABBITMQ_GATEWAY_PASSWORD RABBITMQ_BILLING_USER RABBITMQ_BILLING_PASSWORD; do
		[[ -n "${!var:-}" ]] || missing+=("$var")
	done
	if ((${#missing[@]} > 0)); then
		error "missing environment variables: ${missing[*]} (set them in .env)"
	fi
	export RABBITMQ_QUEUE="${RABBITMQ_QUEUE:-billing_queue}"
	export RABBITMQ_EXCHANGE="${RABBITMQ_EXCHANGE:-billing}"
}

# Passwords are read from the environment by Python, never passed on a command line.
# Hash format of rabbit_password_hashing_sha256: base64(salt + sha256(salt + utf8 password)), 4-byte salt.
write_definitions() {
	python3 - "$DEFINITIONS_FILE" <<-'PY'
	import base64, hashlib, json, os, re, secrets, sys

	env = os.environ
	queue, exchange = env["RABBITMQ_QUEUE"], env["RABBITMQ_EXCHANGE"]
	dlx, dlq = f"{queue}.dlx", f"{queue}.dlq"

	def user(name_var, password_var):
	    salt = secrets.token_bytes(4)
	    digest = hashlib.sha256(salt + env[password_var].encode()).digest()
	    return {"name": env[name_var], "password_hash": base64.b64encode(salt + digest).decode(),
	            "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""}

	def only(name):
	    return f"^{re.escape(name)}$"

	def permission(name_var, write, read):
	    return {"user": env[name_var], "vhost": "/", "configure": "^$", "write": write, "read": read}

	def durable(name, **fields):
	    return {"name": name, "vhost": "/", "durable": True, "auto_delete": False, "arguments": {}, **fields}

	definitions = {
	    "users": [user("RABBITMQ_GATEWAY_USER", "RABBITMQ_GATEWAY_PASSWORD"),
	              user("RABBITMQ_BILLING_USER", "RABBITMQ_BILLING_PASSWORD")],
	    "vhosts": [{"name": "/"}],
	    # Least privilege: the gateway may only publish to the billing exchange, billing-app may only
	    # consume from the queue. Passive declares (checking that they exist) need no permission.
	    "permissions": [permission("RABBITMQ_GATEWAY_USER", write=only(exchange), read="^$"),
	                    permission("RABBITMQ_BILLING_USER", write="^$", read=only(queue))],
	    "exchanges": [durable(exchange, type="direct", internal=False),
	                  durable(dlx, type="direct", internal=False)],
	    "queues": [
	        # A message rejected without requeue, or redelivered 20 times (a consumer that keeps
	        # crashing on it), is dead-lettered to the .dlq instead of looping forever.
	        durable(queue, arguments={
	            "x-queue-type": "quorum",
	            "x-dead-letter-exchange": dlx,
	            "x-dead-letter-routing-key": dlq,
	            "x-delivery-limit": 20}),
	        # Quorum too: everything in it is fsynced whatever the delivery mode, like the main queue.
	        durable(dlq, arguments={"x-queue-type": "quorum"}),
	    ],
	    "bindings": [
	        {"source": exchange, "vhost": "/", "destination": queue, "destination_type": "queue",
	         "routing_key": queue, "arguments": {}},
	        {"source": dlx, "vhost": "/", "destination": dlq, "destination_type": "queue",
	         "routing_key": dlq, "arguments": {}},
	    ],
	}

	path = sys.argv[1]
	fd = os.open(f"{path}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
	with os.fdopen(fd, "w") as out:
	    json.dump(definitions, out, indent=2)
	os.replace(f"{path}.tmp", path)
	PY
}

start_server() {
	write_definitions
	# The broker does not need the passwords: keep them out of its environment.
	unset RABBITMQ_GATEWAY_PASSWORD RABBITMQ_BILLING_PASSWORD
	exec "$RABBITMQ_SERVER"
}

# The broker's AMQP port opens at the end of its boot. Polled with bash's /dev/tcp (a refused connection
# costs nothing and logs nothing); broker_eval then waits for the boot to be complete.
wait_for_broker() {
	local deadline=$((SECONDS + BOOT_TIMEOUT_SECONDS))
	until { exec 3<>"/dev/tcp/127.0.0.1/$AMQP_PORT"; } 2>/dev/null; do
		if ((SECONDS >= deadline)); then
			printf 'error: the broker did not open port %s within %ss\n' "$AMQP_PORT" "$BOOT_TIMEOUT_SECONDS" >&2
			return 1
		fi
		sleep 0.2
	done
	exec 3>&-
}

# Evaluates the Erlang expressions read from stdin on the broker node and prints the result (erl_call's
# notation, without the "{ok, ...}" around it); fails, saying why, on any error. erl_call is a small C client
# of the Erlang distribution, authenticated by the node's cookie in $HOME/.erlang.cookie (never on a command
# line): ~10 ms, where each rabbitmqctl call boots an Erlang VM (~1.5 s and ~0.7 CPU-s here, more while the
# broker itself is booting). The node is rabbit@<this host>, as RabbitMQ names it by default.
broker_eval() {
	local out
	if ! out="$("$ERL_CALL" -sname rabbit -timeout "$BOOT_TIMEOUT_SECONDS" -e)"; then
		printf 'error: erl_call could not evaluate on node rabbit@%s: %s\n' "$(hostname)" "${out:-no answer}" >&2
		return 1
	fi
	if [[ "$out" != "{ok, "*"}" ]]; then
		printf 'error: the broker node answered %s\n' "$out" >&2
		return 1
	fi
	out="${out#"{ok, "}"
	printf '%s\n' "${out%"}"}"
}

# A string as an Erlang binary of its bytes, <<103,97>>: any user name, whatever its characters.
erlang_binary() {
	local bytes
	bytes="$(printf '%s' "$1" | od -An -tu1 -v | tr -s ' \n' ',')"
	bytes="${bytes#,}"
	printf '<<%s>>' "${bytes%,}"
}

# A user name as erl_call prints a binary, #Bin<103,97>, back as a string.
binary_to_string() {
	local byte escaped=""
	for byte in ${1//,/ }; do
		escaped+="$(printf '\\0%03o' "$byte")"
	done
	printf '%b' "$escaped"
}

# A user renamed in .env would otherwise keep its old password and permissions forever. One evaluation on the
# broker: wait for its boot to complete, list the users, delete those .env does not name, return them.
prune_users() {
	local deleted name
	rm -f "$USERS_PRUNED_MARKER"
	unset RABBITMQ_GATEWAY_PASSWORD RABBITMQ_BILLING_PASSWORD
	# Any failure below: said in docker logs, and no marker, so the container does not turn healthy.
	trap 'printf "error: broker users not pruned; the container stays unhealthy until it is restarted\n" >&2' ERR
	wait_for_broker
	deleted="$(broker_eval <<-ERLANG
	ok = rabbit:await_startup(node(), false, ${BOOT_TIMEOUT_SECONDS}000),
	Keep = [$(erlang_binary "$RABBITMQ_GATEWAY_USER"), $(erlang_binary "$RABBITMQ_BILLING_USER")],
	Name = fun(#{user := User}) -> User; (Info) -> proplists:get_value(user, Info) end,
	Stale = [User || User <- lists:map(Name, rabbit_auth_backend_internal:list_users()), not lists:member(User, Keep)],
	lists:foreach(fun(User) -> ok = rabbit_auth_backend_internal:delete_user(User, <<"broker-bootstrap">>) end, Stale),
	Stale.
	ERLANG
	)"
	while [[ "$deleted" =~ \#Bin\<([0-9,]*)\> ]]; do
		deleted="${deleted#*"${BASH_REMATCH[0]}"}"
		name="$(binary_to_string "${BASH_REMATCH[1]}")"
		log "deleted broker user $name (not RABBITMQ_GATEWAY_USER or RABBITMQ_BILLING_USER)"
	done
	: >"$USERS_PRUNED_MARKER"
	log "broker users: $RABBITMQ_GATEWAY_USER, $RABBITMQ_BILLING_USER"
}

main() {
	load_environment
	case "${1:-server}" in
		server) start_server ;;
		prune-users) prune_users ;;
		*) error "unknown command $1 (server or prune-users)" ;;
	esac
}

main "$@"
