#!/usr/bin/env bash
# Build the ggml peer harnesses (verify/tests/ggml_peer/harness.c: dot products; ops.c: rms_norm,
# rope_ext, swiglu_split, flash_attn_ext through ggml's graph API) against the cached llama.cpp
# build and run them, then run the Rust comparisons (verify/tests/ggml_peer.rs, ignored by
# default) against their output: qforge's Q8_0/Q8_1 quantizer and integer dot products, and
# `--ggml-cpu-ops`' norm, RoPE, SwiGLU and flash attention must give llama.cpp's bits.
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
SRC="$BIN/../../src/ggml/include"
cc -O1 -I"$SRC" -c "$ROOT/verify/tests/ggml_peer/ops.c" -o "$OUT/ops.o"
c++ "$OUT/ops.o" "$LIB/libggml-cpu.a" "$LIB/libggml-base.a" -lm -lpthread -fopenmp -o "$OUT/ops"
"$OUT/ops" "$OUT"
cd "$ROOT"
QFORGE_GGML_PEER_DIR="$OUT" cargo test -p qforge-verify --test ggml_peer -- --ignored --nocapture
