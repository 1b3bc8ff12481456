#!/usr/bin/env bash
# Builds the container image from the Containerfile at the repository root:
# stages the build context (only what the image holds) in a fresh folder
# under target/image, runs `podman build` on it and removes it.
#
#   deploy/container/build.sh [TAG]      (default localhost/gateway:latest)
#
# Needs the static binary (`make static`) and the shipped plugins
# (`make plugins`); `make image` builds both, then runs this.
# CONTAINER_ENGINE=docker builds with Docker instead of podman.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
tag="${1:-localhost/gateway:latest}"
bin="$root/target/x86_64-unknown-linux-musl/release/gateway"
ca=/etc/ssl/certs/ca-certificates.crt

fail() { echo "deploy/container/build.sh: $*" >&2; exit 1; }
[[ -x "$bin" ]] || fail "no $bin; \`make static\` builds it"
shopt -s nullglob
plugins=("$root"/plugins/dist/*.wasm)
[[ ${#plugins[@]} -gt 0 ]] || fail "plugins/dist holds no plugins; \`make plugins\` builds them"
[[ -f "$ca" ]] || fail "no $ca; scripts/setup.sh --image installs ca-certificates"

mkdir -p "$root/target/image"
ctx="$(mktemp -d "$root/target/image/context.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT

rootfs="$ctx/rootfs"
# var/cache too, so that it is root's: COPY --chown of the cache folder
# would otherwise make its parents the gateway user's.
install -d -m 755 "$rootfs/usr/local/bin" "$rootfs/etc/gateway/config" \
  "$rootfs/etc/gateway/plugins/dist" "$rootfs/etc/ssl/certs" "$rootfs/var/cache"
# The release build keeps line tables for backtraces on a developer's
# machine; the image drops them (four fifths of its 230 MB) and keeps
# the symbols, so a panic's backtrace still names its functions.
objcopy --strip-debug "$bin" "$rootfs/usr/local/bin/gateway"
install -m 644 "$root/config/gateway.toml" "$rootfs/etc/gateway/config/gateway.toml"
install -m 644 "${plugins[@]}" "$rootfs/etc/gateway/plugins/dist/"
install -m 644 "$root/deploy/container/passwd" "$root/deploy/container/group" "$rootfs/etc/"
install -m 644 "$ca" "$rootfs/etc/ssl/certs/ca-certificates.crt"
install -d -m 700 "$ctx/cache"

version="$("$bin" --version | awk '{print $2}')"
"${CONTAINER_ENGINE:-podman}" build --file "$root/Containerfile" --tag "$tag" \
  --label "org.opencontainers.image.version=$version" "$ctx"
