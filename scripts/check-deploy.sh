#!/usr/bin/env bash
# Checks deploy/kustomize the way CI does (tests/deploy.rs runs it; so does `make deploy-check`):
#   1. `kubectl kustomize` renders each overlay (kubectl from Debian's kubernetes-client when the
#      machine has none; its kustomize is v2.0, which the manifests are written for);
#   2. kubernetes-validate (PyPI; it ships the schemas) validates every object in strict mode;
#   3. checkov (PyPI) runs its Kubernetes checks: no failed check is allowed (suppressions are
#      annotations in the manifests, each with its reason);
#   4. every container's command line, and every exec probe's, runs through the real binary with
#      --check-config, TLS and token files included (scripts/check_manifest_flags.py), plus a
#      self-test that a bad value is refused by name.
# Usage: scripts/check-deploy.sh EMBER_BINARY
# The Python tools go into a venv outside the clone ($EMBER_TOOLS, default /var/tmp/ember-tools),
# installed once per machine from PyPI at pinned versions.
set -euo pipefail
cd "$(dirname "$0")/.."
EMBER=${1:?usage: scripts/check-deploy.sh EMBER_BINARY}
PINS="kubernetes-validate==1.37.0 checkov==3.3.30 cryptography==51.0.1 PyYAML==6.0.4"

if ! kubectl kustomize --help >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "check-deploy: installing kubectl (Debian's kubernetes-client) with apt-get" >&2
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends kubernetes-client >&2
fi
# shellcheck source=scripts/venv-lib.sh
. scripts/venv-lib.sh
ensure_venv deploy-venv "$PINS"

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
echo "kubectl: $(kubectl version --client 2>/dev/null | head -1)"
status=0
for overlay in deploy/kustomize/overlays/*/; do
  name=$(basename "$overlay")
  kubectl kustomize "$overlay" >"$OUT/$name.yaml" 2>"$OUT/$name.err" || {
    cat "$OUT/$name.err" >&2
    echo "FAIL $name: kubectl kustomize" >&2
    exit 1
  }
  counts=$(grep '^kind: ' "$OUT/$name.yaml" | sort | uniq -c | awk '{printf "%s%s %s", sep, $1, $3; sep=", "}')
  echo "== $name: $(grep -c '^kind: ' "$OUT/$name.yaml") objects ($counts)"
  if "$VENV/bin/kubernetes-validate" --strict --quiet "$OUT/$name.yaml"; then
    echo "kubernetes-validate --strict: every object valid"
  else
    echo "FAIL $name: kubernetes-validate" >&2
    status=1
  fi
  # --skip-download: no call to Prisma Cloud (CI has no network but the package registries).
  if "$VENV/bin/checkov" --framework kubernetes -f "$OUT/$name.yaml" --compact --quiet --skip-download \
    >"$OUT/$name.checkov" 2>&1; then
    echo "checkov: $(grep -m1 'Passed checks' "$OUT/$name.checkov")"
  else
    cat "$OUT/$name.checkov" >&2
    echo "FAIL $name: checkov" >&2
    status=1
  fi
done
"$VENV/bin/python" scripts/check_manifest_flags.py "$EMBER" "$OUT"/*.yaml --self-test || status=1
exit $status
