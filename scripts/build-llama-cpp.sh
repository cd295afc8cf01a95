#!/usr/bin/env bash
# Build llama.cpp's own tools as reference peers for qforge's tests and benchmarks.
#
#   scripts/build-llama-cpp.sh                    # build if needed (all output on stderr)
#   scripts/build-llama-cpp.sh --print-bin-dir    # build if needed, then print the bin dir on stdout
#   BIN="$(scripts/build-llama-cpp.sh --print-bin-dir)" && "$BIN/llama-quantize" --help
#   scripts/build-llama-cpp.sh --force            # rebuild even if the stamp matches
#   scripts/build-llama-cpp.sh --strict --print-bin-dir
#                                                 # llama-quantize/llama-imatrix built with
#                                                 # -ffp-contract=off (no FMA contraction of the
#                                                 # scalar reference quantizers; see below)
#
# Source: the llama.cpp tree vendored in the PyPI sdist of llama-cpp-python (pinned below,
# sha256-verified on every run; the only network used is the Python package registry).
#
# Layout (QFORGE_CACHE from scripts/cache-dir.sh):
#   $QFORGE_CACHE/downloads/llama_cpp_python-<V>.tar.gz   pinned sdist
#   $QFORGE_CACHE/llama.cpp-<V>/src                        vendor/llama.cpp (also convert_hf_to_gguf.py, gguf-py/)
#   $QFORGE_CACHE/llama.cpp-<V>/build/bin                  llama-quantize llama-perplexity llama-imatrix
#                                                          llama-tokenize llama-completion llama-bench
#   $QFORGE_CACHE/llama.cpp-<V>/build/bin/build-info.txt   compiler, ISA, cmake cache flags
#   $QFORGE_CACHE/venv-cmake-<CMAKE_VERSION>               only if cmake is not on PATH (pip-installed cmake)
#
# Build: Release, CPU only, static libs, GGML_NATIVE=OFF with the instruction sets this CPU has
# (from /proc/cpuinfo: SSE4.2, AVX, AVX2, FMA, F16C, BMI2, AVX-VNNI, and the AVX-512 family when
# present), never AMX: with -march=native on an AMX machine (Sapphire Rapids class, e.g. a VM)
# every llama-perplexity run died with SIGSEGV right after "threadpool init". The ISA chosen is
# written to build-info.txt and is part of the stamp, so a cache moved to another CPU rebuilds.
# QFORGE_LLAMA_ISA=avx2 caps the build at AVX2 on an AVX-512 machine (the AVX-512 build's
# perplexity on the SmolLM2 Q4_1 test differs from the AVX2 build's: 3.0e-3 vs 6e-5 relative gap
# to qforge, measured on a 2-core AVX-512 Xeon); scripts/test.sh sets it for the reference tests.
# On a non-x86 CPU GGML_NATIVE stays at its default.
# Nothing is fetched at configure/build time (no curl/OpenSSL/BoringSSL, no server/web UI, no
# examples/tests). Idempotent: skipped when every binary exists and the stamp matches the pinned
# inputs, the ISA and the flags.
#
# Python converter: $QFORGE_CACHE/llama.cpp-<V>/src/convert_hf_to_gguf.py (uses the bundled
# gguf-py); its venv: scripts/pyenv.sh --llamacpp-convert (scripts/requirements-llamacpp-convert.txt).
#
# Env: QFORGE_CACHE, PYTHON (default python3; needs pip), JOBS (default: nproc),
#      CMAKE (a cmake binary to use instead of the one on PATH),
#      QFORGE_LLAMA_ISA (detected | avx2; default detected).
set -euo pipefail

# ---- pinned inputs ---------------------------------------------------------------------------
LCP_VERSION="0.3.36"
LCP_REQ="llama-cpp-python==$LCP_VERSION"
LCP_SDIST="llama_cpp_python-$LCP_VERSION.tar.gz"
LCP_SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
# llama.cpp commit vendored by that release, as its CHANGELOG.md records it (the sdist has no git data).
LLAMACPP_COMMIT="0c1e57098"
CMAKE_PIN="3.31.10"   # only installed (from PyPI, into a small venv) when no cmake is on PATH
TARGETS=(llama-quantize llama-perplexity llama-imatrix llama-tokenize llama-completion llama-bench)
CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENCL=OFF -DGGML_SYCL=OFF
  -DGGML_HIP=OFF -DGGML_RPC=OFF -DGGML_BACKEND_DL=OFF
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_BORINGSSL=OFF -DLLAMA_BUILD_LIBRESSL=OFF
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON
  -DLLAMA_LLGUIDANCE=OFF
  "-DLLAMA_BUILD_COMMIT=$LLAMACPP_COMMIT"
)
# ----------------------------------------------------------------------------------------------

# The ggml x86 options for the instruction sets in this CPU's /proc/cpuinfo flags (ggml's
# option names: ggml/CMakeLists.txt; what each turns on: ggml/src/ggml-cpu/CMakeLists.txt),
# AMX always off. Sets ISA (a short description) and appends to CMAKE_FLAGS.
detect_isa() {
  local cap="${QFORGE_LLAMA_ISA:-detected}"
  [[ "$cap" == detected || "$cap" == avx2 ]] \
    || { echo "build-llama-cpp.sh: QFORGE_LLAMA_ISA must be 'detected' or 'avx2', not '$cap'" >&2; exit 2; }
  case "$(uname -m)" in
    x86_64|amd64) ;;
    *) ISA="native ($(uname -m): GGML_NATIVE default)"; return 0 ;;
  esac
  local flags on=() opt
  flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  have() { local f; for f in "$@"; do [[ "$flags" == *" $f "* ]] || return 1; done; }
  # option:cpuinfo flags it needs
  local table=(
    "GGML_SSE42:sse4_2" "GGML_AVX:avx" "GGML_AVX2:avx2" "GGML_FMA:fma" "GGML_F16C:f16c"
    "GGML_BMI2:bmi2" "GGML_AVX_VNNI:avx_vnni"
    "GGML_AVX512:avx512f avx512cd avx512vl avx512dq avx512bw"
    "GGML_AVX512_VBMI:avx512vbmi" "GGML_AVX512_VNNI:avx512_vnni" "GGML_AVX512_BF16:avx512_bf16"
  )
  CMAKE_FLAGS+=(-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
  local capped=0
  for opt in "${table[@]}"; do
    local name="${opt%%:*}" need="${opt#*:}" value=OFF
    # shellcheck disable=SC2086  # $need is a list of flags
    if have $need; then
      if [[ "$cap" == avx2 && "$name" == GGML_AVX512* ]]; then
        capped=1
      else
        value=ON
        on+=("${name#GGML_}")
      fi
    fi
    CMAKE_FLAGS+=("-D$name=$value")
  done
  ISA="${on[*]:-baseline x86-64} (GGML_NATIVE=OFF, AMX off)"
  # Only when the cap changed something, so that on an AVX2 machine both settings share a stamp.
  if ((capped)); then ISA+=", AVX-512 left off (QFORGE_LLAMA_ISA=avx2)"; fi
  return 0
}
ISA=""
detect_isa

print_bin=0 force=0 strict=0
for arg in "$@"; do
  case "$arg" in
    --print-bin-dir) print_bin=1 ;;
    --force) force=1 ;;
    --strict) strict=1 ;;
    -h|--help) sed -n '2,/^set -euo pipefail/{/^set/d;p}' "$0" >&2; exit 0 ;;
    *) echo "build-llama-cpp.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

# Everything but the final --print-bin-dir line goes to stderr.
exec 3>&1 1>&2

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cache-dir.sh
. "$SCRIPT_DIR/cache-dir.sh"
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

DL_DIR="$QFORGE_CACHE/downloads"
ROOT="$QFORGE_CACHE/llama.cpp-$LCP_VERSION"
SRC="$ROOT/src"
BUILD="$ROOT/build"
STAMP="$ROOT/.qforge-complete"
if (( strict )); then
  # The strict build: with -march=native, GCC contracts a*b+c into FMA instructions inside
  # ggml's scalar reference quantizers (quantize_row_q4_K_ref & co.), which changes a few
  # K-quant blocks by one rounding. IEEE evaluation without contraction is what the reference
  # code means and what qforge implements; this build is the byte-identity peer.
  BUILD="$ROOT/build-strict"
  STAMP="$ROOT/.qforge-complete-strict"
  TARGETS=(llama-quantize llama-imatrix)
  CMAKE_FLAGS+=("-DCMAKE_C_FLAGS=-ffp-contract=off" "-DCMAKE_CXX_FLAGS=-ffp-contract=off")
fi
BIN="$BUILD/bin"

log() { echo "build-llama-cpp: $*" >&2; }
die() { echo "build-llama-cpp: ERROR: $*" >&2; exit 1; }

sha256_of() {
  "$PYTHON" - "$1" <<'PY'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())
PY
}

# What the stamp records: any change to the pinned inputs, targets or flags forces a rebuild.
stamp_text() {
  printf '%s\n' "$LCP_REQ" "sdist-sha256=$LCP_SDIST_SHA256" "targets=${TARGETS[*]}" "isa=$ISA" \
    "flags=${CMAKE_FLAGS[*]}"
}

is_built() {
  [[ -f "$STAMP" ]] || return 1
  [[ "$(cat "$STAMP")" == "$(stamp_text)" ]] || return 1
  local t
  for t in "${TARGETS[@]}"; do [[ -x "$BIN/$t" ]] || return 1; done
  return 0
}

# Make sure the pinned sdist is in $DL_DIR with the pinned sha256.
fetch_sdist() {
  local path="$DL_DIR/$LCP_SDIST" got
  mkdir -p "$DL_DIR"
  if [[ -f "$path" ]]; then
    got="$(sha256_of "$path")"
    if [[ "$got" == "$LCP_SDIST_SHA256" ]]; then
      log "ok (cached): $path"
      return 0
    fi
    log "cached $LCP_SDIST has sha256 $got, expected $LCP_SDIST_SHA256; re-downloading"
    rm -f "$path"
  fi
  log "downloading $LCP_REQ (sdist, ~77 MB) ..."
  local tmp
  tmp="$(mktemp -d "$DL_DIR/.lcp.XXXXXX")"
  # --no-binary only for this package: the build backend's own requirements (scikit-build-core,
  # cmake, ninja), which pip installs to read the sdist's metadata, may come as wheels;
  # '--no-binary :all:' would compile cmake from source for that alone (tens of minutes).
  "$PYTHON" -m pip download --disable-pip-version-check --no-input -q --no-deps \
    --no-binary llama-cpp-python "$LCP_REQ" -d "$tmp" >&2 \
    || { rm -rf "$tmp"; die "pip download $LCP_REQ failed"; }
  [[ -f "$tmp/$LCP_SDIST" ]] || { ls -la "$tmp" >&2; rm -rf "$tmp"; die "pip did not produce $LCP_SDIST"; }
  got="$(sha256_of "$tmp/$LCP_SDIST")"
  if [[ "$got" != "$LCP_SDIST_SHA256" ]]; then
    rm -rf "$tmp"
    die "$LCP_SDIST sha256 mismatch: got $got, pinned $LCP_SDIST_SHA256"
  fi
  mv -f "$tmp/$LCP_SDIST" "$path"
  rm -rf "$tmp"
  log "ok: $path"
}

extract_src() {
  if [[ -f "$SRC/.qforge-extracted" && "$(cat "$SRC/.qforge-extracted")" == "$LCP_SDIST_SHA256" ]]; then
    log "ok (cached): $SRC"
    return 0
  fi
  log "extracting vendor/llama.cpp to $SRC"
  rm -rf "$SRC" "$SRC.tmp"
  mkdir -p "$SRC.tmp"
  tar -xzf "$DL_DIR/$LCP_SDIST" -C "$SRC.tmp" --strip-components=3 \
    "llama_cpp_python-$LCP_VERSION/vendor/llama.cpp"
  [[ -f "$SRC.tmp/CMakeLists.txt" && -f "$SRC.tmp/convert_hf_to_gguf.py" ]] \
    || die "sdist has no vendor/llama.cpp tree"
  # The submodule's '.git' file points at a gitdir the sdist does not ship; drop it so that
  # llama.cpp's build-info step cannot pick up the commit of some enclosing repository.
  rm -f "$SRC.tmp/.git"
  echo "$LCP_SDIST_SHA256" > "$SRC.tmp/.qforge-extracted"
  mv "$SRC.tmp" "$SRC"
}

# Sets CMAKE to a usable cmake binary (PATH, $CMAKE, or a pip-installed one in a small venv).
find_cmake() {
  if [[ -n "${CMAKE:-}" ]]; then
    command -v "$CMAKE" >/dev/null 2>&1 || die "CMAKE=$CMAKE is not runnable"
    return 0
  fi
  if command -v cmake >/dev/null 2>&1; then
    CMAKE="$(command -v cmake)"
    return 0
  fi
  local venv="$QFORGE_CACHE/venv-cmake-$CMAKE_PIN"
  if [[ ! -x "$venv/bin/cmake" || ! -f "$venv/.qforge-complete" ]]; then
    log "cmake not on PATH; installing cmake==$CMAKE_PIN from PyPI into $venv"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q "cmake==$CMAKE_PIN" >&2 \
      || die "pip install cmake==$CMAKE_PIN failed (apt-get install cmake is the fallback)"
    touch "$venv/.qforge-complete"
  fi
  CMAKE="$venv/bin/cmake"
}

write_build_info() {
  local info="$BIN/build-info.txt" cache="$BUILD/CMakeCache.txt" cc cxx
  cc="$(sed -n 's/^CMAKE_C_COMPILER:[A-Z]*=//p' "$cache")"
  cxx="$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$cache")"
  {
    echo "# llama.cpp reference build for qforge (scripts/build-llama-cpp.sh)"
    echo "built:               $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "source:              $LCP_REQ sdist, vendor/llama.cpp"
    echo "sdist sha256:        $LCP_SDIST_SHA256"
    echo "llama.cpp version:   $(sed -n 's/.*llama.cpp version: //p' "$BUILD/.qforge-configure.log" | head -1)"
    echo "llama.cpp commit:    $LLAMACPP_COMMIT (from the llama-cpp-python CHANGELOG)"
    echo "host:                $(uname -srm)"
    echo "cpu:                 $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -1)"
    echo "cmake:               $("$CMAKE" --version | head -1)"
    echo "C compiler:          $cc ($("$cc" --version | head -1))"
    echo "C++ compiler:        $cxx ($("$cxx" --version | head -1))"
    echo "targets:             ${TARGETS[*]}"
    echo "isa:                 $ISA"
    echo
    echo "## cmake command-line flags"
    printf '%s\n' "${CMAKE_FLAGS[@]}"
    echo
    echo "## CMakeCache.txt (build type, compiler flags, GGML_* / LLAMA_* options)"
    grep -E '^(CMAKE_BUILD_TYPE|CMAKE_C_FLAGS|CMAKE_CXX_FLAGS|CMAKE_C_COMPILER|CMAKE_CXX_COMPILER|BUILD_SHARED_LIBS|GGML_[A-Z0-9_]+|LLAMA_[A-Z0-9_]+)(:[A-Z]+)?=' "$cache" \
      | grep -vE '^(GGML|LLAMA)_[A-Z0-9_]*_(DIR|LIB|LIBRARY|INCLUDE_DIR|EXECUTABLE|FOUND):' \
      | grep -vE '^GGML_(CUDA|HIP|METAL|SYCL|VULKAN|OPENCL|WEBGPU|MUSA|VIRTGPU|ET|RV|LASX|LSX|VXE|XTHEADVECTOR|CPU_ARM_ARCH|CPU_POWERPC)_' \
      | sort
    echo "(sub-options of the disabled GPU backends and of non-x86 ISAs left out)"
    echo
    echo "## ggml-cpu compile flags (flags.make)"
    local fm
    fm="$(find "$BUILD/ggml/src" -path '*ggml-cpu.dir/flags.make' | head -1)"
    if [[ -n "$fm" ]]; then grep -E '^(C_FLAGS|CXX_FLAGS|C_DEFINES|CXX_DEFINES)' "$fm"; else echo "(not found)"; fi
    echo
    echo "## what -march=native would resolve to on this machine (not used: GGML_NATIVE=OFF on x86-64)"
    "$cc" -march=native -E -v - </dev/null 2>&1 | grep -E 'cc1 ' | sed 's/^ *//' || true
  } > "$info"
  log "wrote $info"
}

build() {
  fetch_sdist
  extract_src
  find_cmake
  log "using $("$CMAKE" --version | head -1) ($CMAKE), $JOBS jobs"
  rm -f "$STAMP"
  mkdir -p "$BUILD"
  log "configuring (Release, CPU only, ISA: $ISA) ..."
  if ! "$CMAKE" -S "$SRC" -B "$BUILD" "${CMAKE_FLAGS[@]}" > "$BUILD/.qforge-configure.log" 2>&1; then
    cat "$BUILD/.qforge-configure.log" >&2
    die "cmake configure failed (log: $BUILD/.qforge-configure.log)"
  fi
  grep -E 'llama.cpp version|CMAKE_BUILD_TYPE|GGML_NATIVE|Including CPU backend|Adding CPU backend|x86 detected|CMake Warning' \
    "$BUILD/.qforge-configure.log" >&2 || true
  log "building ${TARGETS[*]} ..."
  local t0=$SECONDS
  "$CMAKE" --build "$BUILD" --config Release -j "$JOBS" --target "${TARGETS[@]}" >&2 \
    || die "cmake build failed"
  log "build took $((SECONDS - t0)) s"
  local t
  for t in "${TARGETS[@]}"; do [[ -x "$BIN/$t" ]] || die "missing $BIN/$t after the build"; done
  write_build_info
  stamp_text > "$STAMP"
  log "ready: $BIN"
}

main() {
  if (( ! force )) && is_built; then
    # The pinned sdist is re-verified whenever it is still in the cache (a fraction of a second).
    local sdist="$DL_DIR/$LCP_SDIST" got
    if [[ -f "$sdist" ]]; then
      got="$(sha256_of "$sdist")"
      [[ "$got" == "$LCP_SDIST_SHA256" ]] \
        || die "cached $sdist has sha256 $got, pinned $LCP_SDIST_SHA256 (delete it and rerun with --force)"
    fi
    log "up to date: $BIN ($LCP_REQ)"
  else
    mkdir -p "$ROOT"
    (
      # Serialise concurrent builders when flock(1) exists.
      if command -v flock >/dev/null 2>&1; then
        exec 9>"$BUILD.lock"
        flock 9
      fi
      if (( ! force )) && is_built; then exit 0; fi
      build
    )
  fi
  if (( print_bin )); then
    echo "$BIN" >&3
  fi
}

main
