#!/usr/bin/env bash
# Create (or reuse) the pinned Python venv used by the interop tests / fixture generator.
#
#   scripts/pyenv.sh [--fixtures] [--print-python]
#   . scripts/pyenv.sh [--fixtures]          # sourced: also exports QFORGE_PYTHON and activates the venv
#
# interop  (default):   $QFORGE_CACHE/venv-interop-<h12>   from scripts/requirements-interop.txt  (no torch)
# fixtures (--fixtures): $QFORGE_CACHE/venv-fixtures-<h12> from scripts/requirements-fixtures.txt (with torch,
#                        a multi-GB download; only needed to regenerate tests/fixtures, never in CI)
# heavy    (--heavy):    $QFORGE_CACHE/venv-heavy-<h12> from scripts/requirements-heavy.txt (fixtures + transformers,
#                        compressed-tensors; for scripts/test-heavy.sh, never in CI)
# llamacpp-convert (--llamacpp-convert): $QFORGE_CACHE/venv-llamacpp-convert-<h12> from
#                        scripts/requirements-llamacpp-convert.txt (torch + transformers 4.57 for llama.cpp's
#                        convert_hf_to_gguf.py, see scripts/build-llama-cpp.sh; never in CI)
# cuda     (--cuda):     $QFORGE_CACHE/venv-cuda-<h12> from scripts/requirements-cuda.txt (nvcc, ptxas, NVRTC and
#                        headers of CUDA 13.0, ~0.5 GB, no GPU needed; see scripts/cuda-env.sh, check-kernels.sh)
# <h12> = first 12 hex digits of the sha256 of the requirements file (for fixtures: followed by the
# interop file it includes), so editing any pin makes a new venv.
#
# With --print-python the venv's python path is the only thing written to stdout; all progress goes to stderr:
#   PY="$(scripts/pyenv.sh --print-python)" && "$PY" -m pytest ...
# Env: QFORGE_CACHE (see cache-dir.sh), PYTHON (base interpreter, default python3).

_qforge_pyenv_main() {
  local script_dir kind=interop print=0 arg
  script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)" || return 1
  for arg in "$@"; do
    case "$arg" in
      --fixtures) kind=fixtures ;;
      --heavy) kind=heavy ;;
      --llamacpp-convert) kind=llamacpp-convert ;;
      --cuda) kind=cuda ;;
      --interop) kind=interop ;;
      --print-python) print=1 ;;
      -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}" >&2; return 0 ;;
      *) echo "pyenv.sh: unknown argument: $arg" >&2; return 2 ;;
    esac
  done

  # shellcheck source=cache-dir.sh
  . "$script_dir/cache-dir.sh" || return 1
  local base_python="${PYTHON:-python3}"
  local req="$script_dir/requirements-$kind.txt"
  [[ -f "$req" ]] || { echo "pyenv.sh: missing $req" >&2; return 1; }

  # Hash the requirements file plus the files it includes with "-r", recursively
  # (heavy -> fixtures -> interop), so any pin change yields a new venv.
  local hash
  hash="$("$base_python" - "$req" <<'PY'
import hashlib, os, sys
h = hashlib.sha256()
def add(req):
    data = open(req, "rb").read()
    h.update(data)
    for line in data.decode().splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) == 2 and parts[0] in ("-r", "--requirement"):
            add(os.path.join(os.path.dirname(req), parts[1]))
add(sys.argv[1])
print(h.hexdigest()[:12])
PY
)" || { echo "pyenv.sh: cannot run $base_python" >&2; return 1; }
  local venv="$QFORGE_CACHE/venv-$kind-$hash"
  local stamp="$venv/.qforge-complete"
  local py="$venv/bin/python"

  if [[ ! -f "$stamp" ]]; then
    # Every step checks its own status: `set -e` is ignored inside a subshell that is the
    # left side of `||`, so a failed pip install would otherwise be stamped complete.
    (
      # Serialise concurrent creators of the same venv when flock(1) exists.
      if command -v flock >/dev/null 2>&1; then
        exec 9>"$venv.lock" || exit 1
        flock 9 || exit 1
      fi
      if [[ -f "$stamp" ]]; then exit 0; fi
      if [[ -e "$venv" ]]; then
        echo "pyenv.sh: removing incomplete venv $venv" >&2
        rm -rf "$venv" || exit 1
      fi
      echo "pyenv.sh: creating $venv (from $(basename "$req"))" >&2
      "$base_python" -m venv "$venv" >&2 || exit 1
      if [[ "$kind" == fixtures || "$kind" == heavy || "$kind" == llamacpp-convert ]]; then
        echo "pyenv.sh: installing pinned requirements (torch: several GB, takes minutes) ..." >&2
      else
        echo "pyenv.sh: installing pinned requirements ..." >&2
      fi
      "$py" -m pip install --disable-pip-version-check --no-input -q -r "$req" >&2 || exit 1
      cp "$req" "$stamp" || exit 1
      echo "pyenv.sh: ready: $venv" >&2
    ) || { echo "pyenv.sh: ERROR: creating $venv failed" >&2; return 1; }
  else
    echo "pyenv.sh: reusing $venv" >&2
  fi

  QFORGE_PYTHON="$py"
  export QFORGE_PYTHON
  if (( print )); then
    echo "$py"
  fi
  return 0
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  # Sourced: set up, export QFORGE_PYTHON and activate the venv in the caller's shell.
  if _qforge_pyenv_main "$@" && [[ -n "${QFORGE_PYTHON:-}" ]]; then
    # shellcheck disable=SC1091
    . "$(dirname "$QFORGE_PYTHON")/activate"
  fi
else
  set -euo pipefail
  _qforge_pyenv_main "$@"
fi
