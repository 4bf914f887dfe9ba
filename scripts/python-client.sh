#!/usr/bin/env bash
# Makes the Python client's environment and installs clients/python into it, the way a user
# would (`pip install ./clients/python`: the build generates the gRPC modules from proto/ with
# grpcio-tools). Prints the environment's python. The venv lives outside the clone
# ($EMBER_TOOLS, default /var/tmp/ember-tools) and is made once per machine from PyPI at pinned
# versions; the package itself is rebuilt on every run, so it always matches proto/.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${EMBER_TOOLS:-/var/tmp/ember-tools}
VENV="$TOOLS/python-client-venv"
PINS="grpcio==1.85.4 grpcio-tools==1.85.4 protobuf==7.36.2 setuptools==84.2.1 wheel==0.48.0"
if [ "$(cat "$VENV/pins" 2>/dev/null)" != "$PINS" ]; then
  echo "python-client: installing $PINS into $VENV" >&2
  rm -rf "$VENV"
  mkdir -p "$TOOLS"
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q --disable-pip-version-check $PINS >&2
  echo "$PINS" >"$VENV/pins"
fi
# The build's requirements (setuptools, grpcio-tools) are the venv's own: no second download.
"$VENV/bin/pip" install -q --disable-pip-version-check --no-build-isolation --no-deps --force-reinstall \
  ./clients/python >&2
rm -rf clients/python/build clients/python/*.egg-info
echo "$VENV/bin/python"
