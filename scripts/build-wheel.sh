#!/usr/bin/env bash
# Build the pip-installable wheel of the qforge binary with maturin (pyproject.toml) and install
# it into a fresh venv, then check that `qforge --version` runs from the venv's bin/.
#
#   scripts/build-wheel.sh [--no-strip] [OUT_DIR]   # the wheel is left in OUT_DIR (default: target/wheels)
#
# maturin (pinned) compiles the release binary, stripped as pyproject.toml says: the qforge crate
# is compiled again even after a `cargo build --release` (strip changes its flags). --no-strip
# packages the binary `cargo build --release --locked --bin qforge` already built, as it is
# (line tables kept; a bigger wheel, about 16 MB against 4 MB): what scripts/test.sh runs, in
# seconds. Env: PYTHON (base interpreter, default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
strip=()
if [[ "${1:-}" == --no-strip ]]; then
  strip=(--strip false)
  shift
fi
out="${1:-target/wheels}"
py="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== maturin build (release)" >&2
"$py" -m venv "$work/build"
"$work/build/bin/pip" install -q 'maturin==1.15.0'
"$work/build/bin/maturin" build --release --locked "${strip[@]}" -o "$out" >&2
wheel="$(ls -t "$out"/qforge-*.whl | head -1)"
echo "built $wheel" >&2

echo "== install into a fresh venv" >&2
"$py" -m venv "$work/fresh"
"$work/fresh/bin/pip" install -q "$wheel"
version="$("$work/fresh/bin/qforge" --version)"
echo "$version"
case "$version" in
  "qforge "*"(commit "*")") ;;
  *) echo "build-wheel.sh: unexpected --version output: $version" >&2; exit 1 ;;
esac
"$work/fresh/bin/qforge" --help >/dev/null
