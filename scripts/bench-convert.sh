#!/usr/bin/env bash
# Conversion benchmarks for BENCHMARKS.md, each against its peer in the same run:
#   1. HF -> GGUF F16: qforge vs llama.cpp's convert_hf_to_gguf.py on the same HF directory
#      (SmolLM2-135M made HF by qforge from the shipped GGUF, tokenizer included), wall time and
#      peak RSS; then the two outputs compared tensor by tensor and key by key.
#   2. Meta MP8 -> HF on a multi-GB synthetic model (8B widths, --layers N), wall and peak RSS
#      against the largest tensor.
# Usage: scripts/bench-convert.sh [LAYERS]   (default 8: ~5.6 GB BF16)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/cache-dir.sh
layers="${1:-8}"
cargo build --release --locked --bin qforge >&2
scripts/fetch-data.sh --model-only >&2
qf="${CARGO_TARGET_DIR:-$PWD/target}/release/qforge"
work="$QFORGE_CACHE/bench"
mkdir -p "$work"
measure() { /usr/bin/time -f "%e s wall, %M KiB peak RSS" "$@" 2>&1 >/dev/null | tail -1; }

echo "## HF -> GGUF F16 (SmolLM2-135M)"
hf="$work/smollm2-hf"
[[ -d "$hf" ]] || "$qf" convert "$QFORGE_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$hf" --to hf --dtype bf16 --allow-lossy >&2
rm -f "$work/qforge-f16.gguf" "$work/llamacpp-f16.gguf"
echo "qforge:               $(measure "$qf" convert "$hf" "$work/qforge-f16.gguf" --to gguf --dtype f16)"
bin="$(scripts/build-llama-cpp.sh --print-bin-dir)"
conv_py="$(scripts/pyenv.sh --llamacpp-convert --print-python)"
echo "convert_hf_to_gguf:   $(measure "$conv_py" "$bin/../../src/convert_hf_to_gguf.py" "$hf" --outtype f16 --outfile "$work/llamacpp-f16.gguf")"
"$(scripts/pyenv.sh --print-python)" scripts/compare_gguf.py "$work/qforge-f16.gguf" "$work/llamacpp-f16.gguf"

echo "## Meta MP8 -> HF (synthetic Llama-3-8B widths, $layers layers)"
src="$QFORGE_CACHE/synthetic/llama3-8b-l$layers"
[[ -d "$src" ]] || "$(scripts/pyenv.sh --print-python)" scripts/gen_synthetic.py --format hf --shape llama3-8b --layers "$layers" --shard-size 2000000000 "$src" >&2
meta="$work/llama3-8b-l$layers-mp8"
[[ -d "$meta" ]] || "$qf" convert "$src" "$meta" --to meta --mp 8 >&2
rm -rf "$work/mp8-to-hf"
echo "qforge MP8 -> HF:     $(measure "$qf" convert "$meta" "$work/mp8-to-hf" --to hf)"
du -sb "$meta" "$work/mp8-to-hf"
echo "largest tensor: $("$qf" inspect --json "$meta" | "$(scripts/pyenv.sh --print-python)" -c 'import json,sys; print(max(t["bytes"] for t in json.load(sys.stdin)["tensors"]))') bytes"
