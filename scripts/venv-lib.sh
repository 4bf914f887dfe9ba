# Shared by the scripts that need Python tools from PyPI (source it; it defines functions only).
#
# ensure_venv NAME "PINS": makes sure ${EMBER_TOOLS:-/var/tmp/ember-tools}/NAME is a venv holding
# exactly PINS (pip specifiers, space-separated), made once per machine outside the clone and
# remade when the pins change; sets VENV to its directory.
ensure_venv() {
  local tools=${EMBER_TOOLS:-/var/tmp/ember-tools}
  VENV="$tools/$1"
  if [ "$(cat "$VENV/pins" 2>/dev/null)" != "$2" ]; then
    echo "$(basename "$0"): installing $2 into $VENV" >&2
    rm -rf "$VENV"
    mkdir -p "$tools"
    python3 -m venv "$VENV"
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install -q --disable-pip-version-check $2 >&2
    echo "$2" >"$VENV/pins"
  fi
}
