#!/usr/bin/env bash
# Install (or reuse) the llm-compressor layer over the heavy venv and print the directory to put
# first on PYTHONPATH (progress on stderr):
#   LAYER="$(scripts/pylayer-llmcompressor.sh)" && PYTHONPATH="$LAYER" "$(scripts/pyenv.sh --heavy --print-python)" ...
# The layer is $QFORGE_CACHE/pylayer-llmcompressor-<h12> (sha256 of requirements-llmcompressor.txt),
# installed with `pip install --target --no-deps` from that file's pins, so torch is shared with the
# heavy venv and no second torch is downloaded.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/cache-dir.sh"
req="$here/requirements-llmcompressor.txt"
py="$("$here/pyenv.sh" --heavy --print-python)"
h="$(sha256sum "$req" | cut -c1-12)"
dir="$QFORGE_CACHE/pylayer-llmcompressor-$h"
if [[ ! -f "$dir/.qforge-complete" ]]; then
  rm -rf "$dir"
  echo "pylayer-llmcompressor.sh: installing into $dir" >&2
  "$py" -m pip install --quiet --no-deps --target "$dir" -r "$req" >&2
  touch "$dir/.qforge-complete"
fi
echo "$dir"
