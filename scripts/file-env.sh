# shellcheck shell=bash
# Sourced by db-bootstrap.sh and broker-bootstrap.sh (installed beside them in /usr/local/bin).
#
# file_env VAR: VAR comes from $VAR, or from the content of the file named by $VAR_FILE
# (the Docker secrets convention); setting both is an error. VAR_FILE is unset afterwards.
file_env() {
	local var="$1" file_var="${1}_FILE"
	if [[ -n "${!var:-}" && -n "${!file_var:-}" ]]; then
		printf 'error: both %s and %s are set; use only one\n' "$var" "$file_var" >&2
		exit 1
	fi
	if [[ -n "${!file_var:-}" ]]; then
		if [[ ! -r "${!file_var}" ]]; then
			printf 'error: %s: cannot read %s\n' "$file_var" "${!file_var}" >&2
			exit 1
		fi
		export "$var"="$(<"${!file_var}")"
	fi
	unset "$file_var"
}
