#!/usr/bin/env bash
# The interop tests that need torch (transformers' GGUF loader, torch.load of our .pth files,
# compressed-tensors). Too heavy for the default CI path (torch and its CUDA wheels are several
# GB); run by hand: the whole interop suite in the heavy venv, so nothing is skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --locked --bin qforge
scripts/fetch-data.sh
PY="$(scripts/pyenv.sh --heavy --print-python)"
QFORGE_BIN="$PWD/target/release/qforge" "$PY" -m pytest -p no:cacheprovider -q -rs tests/interop "$@"
