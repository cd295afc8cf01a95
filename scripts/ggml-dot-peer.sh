#!/usr/bin/env bash
# Build the ggml dot-product peer harness (verify/tests/ggml_peer/harness.c) against the cached
# llama.cpp build and run it, then run the Rust comparison (verify/tests/ggml_peer.rs, ignored by
# default) against its output: qforge's Q8_0/Q8_1 quantizer and integer dot products must give
# llama.cpp's bits.
#
#   QFORGE_LLAMA_ISA=avx2 scripts/ggml-dot-peer.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$("$ROOT/scripts/build-llama-cpp.sh" --print-bin-dir)"
LIB="$BIN/../ggml/src"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
cc -O1 -c "$ROOT/verify/tests/ggml_peer/harness.c" -o "$OUT/harness.o"
c++ "$OUT/harness.o" "$LIB/libggml-cpu.a" "$LIB/libggml-base.a" -lm -lpthread -fopenmp -o "$OUT/harness"
for t in q4_0 q4_1 q5_0 q5_1 q8_0; do "$OUT/harness" "$t" "$OUT"; done
cd "$ROOT"
QFORGE_GGML_PEER_DIR="$OUT" cargo test -p qforge-verify --test ggml_peer -- --ignored --nocapture
