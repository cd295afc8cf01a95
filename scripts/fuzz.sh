#!/usr/bin/env bash
# Long mutation-fuzzing run of every reader (qforge-fuzz, stable Rust, in-process):
#   scripts/fuzz.sh [INPUTS_PER_READER (default 1000000)] [SEED (default 1)]
# Readers run in parallel over QFORGE_FUZZ_JOBS processes (default 2). Each prints one line
# (inputs, ok, rejected, panics, hangs, alloc-cap hits, peak memory, inputs/s); findings are
# minimized and saved under target/fuzz-findings/; progress lines go to target/fuzz-logs/*.err. Exits non-zero on any finding or crash.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
n="${1:-1000000}"
seed="${2:-1}"
jobs="${QFORGE_FUZZ_JOBS:-2}"
# the `fuzz` profile is release with overflow checks on: a wrapped length is a finding, too
cargo build --profile fuzz --locked -p qforge-fuzz >&2
bin="$PWD/target/fuzz/qforge-fuzz"
logs="$PWD/target/fuzz-logs"
rm -rf "$logs"
mkdir -p "$logs"
start=$SECONDS
# the slowest readers first, so the two workers finish together
"$bin" --list | tac | xargs -P "$jobs" -I{} sh -c \
    '"$0" --target "$1" --inputs "$2" --seed "$3" --findings "$4" --progress 50000 >"$5/$1.txt" 2>"$5/$1.err"; echo $? >"$5/$1.rc"' \
    "$bin" {} "$n" "$seed" "$PWD/target/fuzz-findings" "$logs"
status=0
for t in $("$bin" --list); do
    cat "$logs/$t.txt"
    rc="$(cat "$logs/$t.rc")"
    if [ "$rc" != 0 ]; then
        echo "$t: exit $rc (see $logs/$t.err; a crash leaves its input in the work directory)" >&2
        cat "$logs/$t.err" >&2
        status=1
    fi
done
echo "fuzzed $n inputs per reader (seed $seed) in $((SECONDS - start)) s with $jobs jobs" >&2
exit "$status"
