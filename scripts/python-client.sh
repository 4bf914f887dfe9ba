#!/usr/bin/env bash
# Makes the Python client's environment and installs clients/python into it, the way a user
# would (`pip install ./clients/python`: the build generates the gRPC modules from proto/ with
# grpcio-tools). Prints the environment's python. The venv lives outside the clone
# ($EMBER_TOOLS, default /var/tmp/ember-tools) and is made once per machine from PyPI at pinned
# versions; the package itself is rebuilt on every run, so it always matches proto/.
set -euo pipefail
cd "$(dirname "$0")/.."
PINS="grpcio==1.85.4 grpcio-tools==1.85.4 protobuf==7.36.2 setuptools==84.2.1 wheel==0.48.0"
# shellcheck source=scripts/venv-lib.sh
. scripts/venv-lib.sh
ensure_venv python-client-venv "$PINS"
# The build's requirements (setuptools, grpcio-tools) are the venv's own: no second download.
"$VENV/bin/pip" install -q --disable-pip-version-check --no-build-isolation --no-deps --force-reinstall \
  ./clients/python >&2
rm -rf clients/python/build clients/python/*.egg-info
echo "$VENV/bin/python"
