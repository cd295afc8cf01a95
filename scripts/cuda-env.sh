#!/usr/bin/env bash
# Print the environment of the CUDA 13 compiler wheels (created on first use by
# `scripts/pyenv.sh --cuda`, ~0.5 GB, no GPU needed), as shell `export` lines:
#
#   eval "$(scripts/cuda-env.sh)"
#
#   QFORGE_CUDA_HOME      the wheel's CUDA root (bin/nvcc, bin/ptxas, include/, include/cccl, lib/)
#   QFORGE_CUDA_INCLUDE   include dirs for NVRTC/nvcc, ':'-separated: include and include/cccl
#                         (CUDA 13 moved nv/target and cuda/std to include/cccl)
#   QFORGE_NVCC           path of nvcc
#   LD_LIBRARY_PATH       prefixed with the dir holding libnvrtc.so.13 (cudarc loads it by name)
#
# kernels/tests/nvrtc_compile.rs compiles every kernels/cuda/*.cu when QFORGE_CUDA_HOME is set;
# scripts/check-kernels.sh runs nvcc/ptxas from it. Progress goes to stderr, exports to stdout.
set -euo pipefail
script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="$("$script_dir/pyenv.sh" --cuda --print-python)"
home="$("$py" - <<'PY'
import os, sysconfig
print(os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "cu13"))
PY
)"
for f in bin/nvcc bin/ptxas lib/libnvrtc.so.13 include/cccl; do
  [[ -e "$home/$f" ]] || { echo "cuda-env.sh: missing $home/$f (requirements-cuda.txt changed?)" >&2; exit 1; }
done
printf 'export QFORGE_CUDA_HOME=%q\n' "$home"
printf 'export QFORGE_CUDA_INCLUDE=%q\n' "$home/include:$home/include/cccl"
printf 'export QFORGE_NVCC=%q\n' "$home/bin/nvcc"
printf 'export LD_LIBRARY_PATH=%q\n' "$home/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
