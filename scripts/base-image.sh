#!/usr/bin/env bash
# Makes sure the base image debian:bookworm-slim exists in the local Docker engine.
#   1. already present      -> nothing to do
#   2. a registry answers   -> docker pull
#   3. air-gapped machine   -> build it with debootstrap, slimmed like the official image
# Idempotent; prints what it did. Needs root (debootstrap) only in case 3.
set -Eeuo pipefail

readonly IMAGE="debian:bookworm-slim"
readonly SUITE="bookworm"
readonly MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

log() { printf 'base-image: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Same trimming as the official slim image: no docs, man pages or translations.
write_slim_dpkg_config() {
	local root="$1"
	cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<-'CFG'
	path-exclude /usr/share/doc/*
	path-include /usr/share/doc/*/copyright
	path-exclude /usr/share/man/*
	path-exclude /usr/share/groff/*
	path-exclude /usr/share/info/*
	path-exclude /usr/share/lintian/*
	path-exclude /usr/share/linda/*
	path-exclude /usr/share/locale/*
	path-include /usr/share/locale/locale.alias
	CFG
	# What debootstrap already unpacked is removed by hand, keeping copyright files.
	find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
	find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
	rm -rf "$root/usr/share/man/"* "$root/usr/share/info/"* "$root/usr/share/groff/"* "$root/usr/share/lintian/"*
	find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
}

# apt behaves as in the official image: no caches kept, no recommends by default is left to Dockerfiles.
write_apt_config() {
	local root="$1"
	rm -f "$root/etc/apt/sources.list"
	cat >"$root/etc/apt/sources.list.d/debian.sources" <<-'SRC'
	Types: deb
	URIs: http://deb.debian.org/debian
	Suites: bookworm bookworm-updates
	Components: main
	Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

	Types: deb
	URIs: http://deb.debian.org/debian-security
	Suites: bookworm-security
	Components: main
	Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	SRC
	cat >"$root/etc/apt/apt.conf.d/docker-clean" <<-'APT'
	DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
	APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
	Dir::Cache::pkgcache "";
	Dir::Cache::srcpkgcache "";
	APT
	echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
	echo 'Acquire::GzipIndexes "true";' >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
}

# A TLS-intercepting proxy (corporate networks, this CI) re-signs PyPI's certificate with a local CA.
# Images trust the host's local CAs the standard way: ca-certificates picks them up when installed.
copy_local_cas() {
	local root="$1" crt
	mkdir -p "$root/usr/local/share/ca-certificates"
	for crt in /usr/local/share/ca-certificates/*.crt; do
		[[ -e "$crt" ]] || continue
		cp "$crt" "$root/usr/local/share/ca-certificates/"
		log "trusting local CA $(basename "$crt")"
	done
}

clean_rootfs() {
	local root="$1"
	rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"* "$root/var/log/"*.log \
		"$root/var/log/apt/"* "$root/tmp/"* "$root/root/.bash_history" "$root/debootstrap"
	: >"$root/etc/machine-id"
	# The official image ships "docker" as hostname placeholder and an empty resolv.conf; Docker injects both.
	: >"$root/etc/resolv.conf"
}

build_with_debootstrap() {
	command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
	[[ $EUID -eq 0 ]] || die "building $IMAGE with debootstrap needs root"
	ROOTFS="$(mktemp -d /tmp/bookworm-rootfs.XXXXXX)"
	trap 'rm -rf "$ROOTFS"' EXIT
	local root="$ROOTFS"
	log "building $IMAGE from $MIRROR with debootstrap (about 30 s)"
	debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >/dev/null
	write_slim_dpkg_config "$root"
	write_apt_config "$root"
	copy_local_cas "$root"
	clean_rootfs "$root"
	tar --numeric-owner -C "$root" -c . | docker import \
		--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--change 'CMD ["bash"]' \
		--message "debootstrap --variant=minbase $SUITE, slimmed" \
		- "$IMAGE" >/dev/null
	log "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
}

main() {
	docker info >/dev/null 2>&1 || die "the Docker engine does not answer (is dockerd running?)"
	if docker image inspect "$IMAGE" >/dev/null 2>&1; then
		log "$IMAGE already present"
	elif timeout 60 docker pull -q "$IMAGE" >/dev/null 2>&1; then
		log "pulled $IMAGE"
	else
		log "no registry reachable"
		build_with_debootstrap
	fi
}

main "$@"
