# shellcheck shell=bash
# The machine's caches for this project, outside any clone: tools built with `cargo install`, the
# Python venvs and (for CI) the cargo target directory. A cache only saves time: each entry is
# keyed by everything it depends on, so a changed input makes a new entry instead of serving a
# stale one, and deleting $ROTATOR_CACHE costs a cold build, nothing else.
#
# Source this file after setting ROOT. Everything it prints goes to stderr.
#
#   ROTATOR_CACHE             the cache root (default ${XDG_CACHE_HOME:-~/.cache}/rds-rotator)
#   cache_key FILE...         a short hash of the Rust toolchain and the files' contents
#   cargo_tool CRATE VERSION  prints the path of CRATE's binary at VERSION: the one on PATH when
#                             it is that version, else `cargo install --locked` into the cache
#                             (keyed by the version and the toolchain), installed on first use
#   cache_prune PREFIX KEEP   deletes all but the KEEP most recently used $ROTATOR_CACHE/PREFIX*

ROTATOR_CACHE="${ROTATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rds-rotator}"

cache_log() { printf '%s\n' "cache: $*" >&2; }

cache_key() { # FILE...
    { rustc -vV && cargo -V && cat -- "$@"; } | sha256sum | cut -c1-16
}

cargo_tool() { # CRATE VERSION [BINARY]
    local crate=$1 version=$2 bin=${3:-$1} found root
    # The version as a whole number, with or without a leading v ("mdbook v0.4.52").
    local is_version="(^|[^0-9.])${version//./\\.}([^0-9.]|\$)"
    if found=$(command -v "$bin") && "$found" --version 2>/dev/null | head -n 1 | grep -qE "$is_version"; then
        printf '%s\n' "$found"
        return 0
    fi
    root="$ROTATOR_CACHE/$crate-$version-$(cache_key /dev/null)"
    if ! "$root/bin/$bin" --version 2>/dev/null | head -n 1 | grep -qE "$is_version"; then
        cache_log "installing $crate $version into $root (cargo install --locked; cached for the next run)"
        cargo install --locked --quiet "$crate" --version "$version" --root "$root" >&2 || return 1
    fi
    printf '%s\n' "$root/bin/$bin"
}

cache_prune() { # PREFIX KEEP
    local prefix=$1 keep=$2 old
    [[ -d $ROTATOR_CACHE ]] || return 0
    # ls -t: most recently modified first; the user of an entry touches it.
    while IFS= read -r old; do
        [[ -n $old ]] || continue
        cache_log "removing $old (not used by the last $keep runs)"
        rm -rf -- "$old"
    done < <(cd "$ROTATOR_CACHE" && ls -1dt -- "$prefix"* 2>/dev/null | tail -n +$((keep + 1)) | sed "s|^|$ROTATOR_CACHE/|")
}
