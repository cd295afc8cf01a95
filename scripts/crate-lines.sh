#!/usr/bin/env bash
# Non-test Rust lines per workspace crate and each crate's share of the total.
#   scripts/crate-lines.sh
# Counted: every line (code, comments, blank) of the .rs files under a crate's directory
# (src/, examples/, benches/, build.rs); the root package `qforge` is src/ and build.rs.
# Left out: tests/ directories, and `#[cfg(test)]` modules (from the attribute to the brace
# that closes the module at the module line's indentation).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Lines of the given .rs files, less their #[cfg(test)] modules.
count() {
  [ "$#" -eq 0 ] && { echo 0; return; }
  awk '
    FNR == 1 { pending = 0; skip = 0 }
    skip {
      if ($0 == indent "}") skip = 0
      next
    }
    pending {
      if (match($0, /^[ \t]*(pub(\([a-z]+\))? )?mod [A-Za-z0-9_]+ *\{ *$/)) {
        indent = $0; sub(/[^ \t].*$/, "", indent); skip = 1; pending = 0; held = 0; next
      }
      n += held; held = 0; pending = 0
    }
    /^[ \t]*#\[cfg\(test\)\][ \t]*$/ { pending = 1; held = 1; next }
    { n++ }
    END { print n + held }
  ' "$@"
}

crates=(qforge codecs stage convert quantize kernels verify calibrate fuzz)
declare -A lines
total=0
for c in "${crates[@]}"; do
  if [ "$c" = qforge ]; then
    mapfile -t files < <(find src build.rs -name '*.rs' | sort)
  else
    mapfile -t files < <(find "$c" -name '*.rs' -not -path '*/tests/*' -not -path '*/target/*' | sort)
  fi
  lines[$c]=$(count "${files[@]}")
  total=$((total + lines[$c]))
done
printf '%-10s %8s %7s\n' crate lines share
for c in "${crates[@]}"; do
  printf '%-10s %8d %6.1f%%\n' "$c" "${lines[$c]}" "$(echo "${lines[$c]} * 100 / $total" | bc -l)"
done
printf '%-10s %8d\n' total "$total"
