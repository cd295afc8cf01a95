#!/usr/bin/env bash
# Compile-only check of every CUDA kernel (kernels/cuda/*.cu) with nvcc + ptxas for sm_89 (Ada,
# the first arch with FP8 mma.sync) and sm_90a (Hopper), no GPU needed. Prints one markdown table
# row per (kernel, arch): registers, spill stores/loads, stack frame, static shared memory (the
# GEMM's cp.async ring is dynamic shared memory, sized at launch: see kernels/src/cuda/mod.rs).
# Fails if any file does not compile or any kernel spills registers or uses a stack frame.
#
#   scripts/check-kernels.sh            # table on stdout, progress on stderr
#
# The compilers come from `scripts/cuda-env.sh` (pinned CUDA 13.0 wheels, created on first use).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cuda_env="$(scripts/cuda-env.sh)"  # an assignment, so a failure stops the script (set -e)
eval "$cuda_env"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

archs=(sm_89 sm_90a)
echo "nvcc: $("$QFORGE_NVCC" --version | tail -1)" >&2
echo "| kernel | arch | registers | spill stores (B) | spill loads (B) | stack (B) | static smem (B) |"
echo "|---|---|---|---|---|---|---|"
bad=0
for cu in kernels/cuda/*.cu; do
  for arch in "${archs[@]}"; do
    log="$tmp/$(basename "$cu" .cu)-$arch.log"
    if ! "$QFORGE_NVCC" -arch="$arch" -cubin -std=c++17 -Xptxas -v -Werror all-warnings \
        -o "$tmp/out.cubin" "$cu" >"$log" 2>&1; then
      echo "check-kernels.sh: FAILED to compile $cu for $arch:" >&2
      cat "$log" >&2
      exit 1
    fi
    # ptxas -v prints, per entry: "Compiling entry function 'NAME' for 'ARCH'", then
    # "N bytes stack frame, S bytes spill stores, L bytes spill loads", then
    # "Used R registers, ... [, B bytes smem], ...".
    rows="$(awk -v arch="$arch" '
      /Compiling entry function/ { match($0, /function \047[^\047]+\047/); name = substr($0, RSTART + 10, RLENGTH - 11); stack = ""; st = ""; ld = "" }
      /bytes stack frame/ { for (i = 1; i <= NF; i++) { if ($(i+1) == "bytes" && $(i+2) == "stack") stack = $i; if ($(i+2) == "spill" && $(i+3) == "stores,") st = $i; if ($(i+2) == "spill" && $(i+3) == "loads") ld = $i } }
      /Used [0-9]+ registers/ {
        regs = ""; smem = 0
        for (i = 1; i <= NF; i++) { if ($i == "Used") regs = $(i+1); if ($(i+1) == "bytes" && $(i+2) ~ /^smem/) smem = $i }
        printf "| %s | %s | %s | %s | %s | %s | %s |\n", name, arch, regs, st, ld, stack, smem
      }' "$log")"
    if [[ -z "$rows" ]]; then
      echo "check-kernels.sh: no ptxas -v output parsed for $cu ($arch)" >&2
      cat "$log" >&2
      exit 1
    fi
    echo "$rows"
    while IFS='|' read -r _ name _ _ st ld stack _; do
      if (( st != 0 || ld != 0 || stack != 0 )); then
        echo "check-kernels.sh: $name ($arch) spills: stores $st B, loads $ld B, stack $stack B" >&2
        bad=1
      fi
    done <<<"$rows"
  done
done
if (( bad )); then
  echo "check-kernels.sh: FAILED: register spills (see above)" >&2
  exit 1
fi
echo "check-kernels.sh: every kernel compiles for ${archs[*]} with no spills" >&2
