# shellcheck shell=bash
# Sourced by db-bootstrap.sh, db-healthcheck.sh and broker-bootstrap.sh (scripts/image/, all installed
# together in /usr/local/bin, so each finds it beside itself).
#
# file_env VAR: VAR comes from $VAR, or from the content of the file named by $VAR_FILE
# (the Docker secrets convention); setting both is an error. VAR_FILE is unset afterwards.
# Trailing CR and LF characters of the file are dropped, as the Python apps do (common/config.py).
file_env() {
	local var="$1" file_var="${1}_FILE" value
	if [[ -n "${!var:-}" && -n "${!file_var:-}" ]]; then
		printf 'error: both %s and %s are set; use only one\n' "$var" "$file_var" >&2
		exit 1
	fi
	if [[ -n "${!file_var:-}" ]]; then
		if [[ ! -r "${!file_var}" ]]; then
			printf 'error: %s: cannot read %s\n' "$file_var" "${!file_var}" >&2
			exit 1
		fi
		value="$(<"${!file_var}")"
		# Remove the longest suffix made only of CR and LF (the "...\r\n" of a file saved on Windows).
		export "$var"="${value%"${value##*[!$'\r\n']}"}"
	fi
	unset "$file_var"
}
