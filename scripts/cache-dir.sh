# shellcheck shell=bash
# Source this file: sets and exports QFORGE_CACHE (the per-user cache for
# downloaded data, Python venvs and generated scale-test checkpoints).
#   . scripts/cache-dir.sh
# Override by exporting QFORGE_CACHE (or XDG_CACHE_HOME) beforehand.
QFORGE_CACHE="${QFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qforge}"
export QFORGE_CACHE
mkdir -p "$QFORGE_CACHE"
