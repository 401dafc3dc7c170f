#!/usr/bin/env bash
# Print the path of a promtool binary, fetching it when there is none.
#
# promtool ships only inside Debian's "prometheus" package, which is a Prometheus
# *server*: installing it starts a service on :9090 (the gateway's own admin port)
# on hosts with systemd, and pulls prometheus-node-exporter in through Recommends.
# So the package is not installed: `apt-get download` fetches the .deb (no root
# needed, no maintainer scripts run) and `dpkg-deb -x` unpacks it into
# .cache/promtool/, from which only usr/bin/promtool is used (a static Go binary:
# none of the package's dependencies are needed). A promtool already on the PATH
# is used as it is.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/.cache/promtool"
BIN="$DIR/root/usr/bin/promtool"

die() { printf 'fetch-promtool: ERROR: %s\n' "$*" >&2; exit 1; }

if command -v promtool >/dev/null 2>&1; then
  command -v promtool
  exit 0
fi
if [ ! -x "$BIN" ]; then
  command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 \
    || die "promtool is missing and apt-get/dpkg-deb are unavailable: install promtool and re-run"
  rm -rf "$DIR" && mkdir -p "$DIR"
  # apt-get download reads the package lists; refresh them once if the package is unknown.
  if ! (cd "$DIR" && apt-get download -q prometheus >&2); then
    [ "$(id -u)" = 0 ] || die "apt-get download prometheus failed (run apt-get update as root first)"
    apt-get update -q >&2 || die "apt-get update failed"
    (cd "$DIR" && apt-get download -q prometheus >&2) || die "apt-get download prometheus failed"
  fi
  dpkg-deb -x "$DIR"/prometheus_*.deb "$DIR/root" || die "dpkg-deb -x failed"
  rm -f "$DIR"/prometheus_*.deb
  [ -x "$BIN" ] || die "the prometheus package holds no usr/bin/promtool"
fi
echo "$BIN"
