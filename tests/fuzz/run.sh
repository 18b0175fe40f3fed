#!/usr/bin/env bash
# Runs each libFuzzer target for a bounded time: make fuzz calls
#   tests/fuzz/run.sh BUILD_DIR SECONDS TARGET...
# Seeds come from tests/fuzz/corpus/TARGET (read only); what the fuzzer finds
# goes to BUILD_DIR/corpus/TARGET, a crash to BUILD_DIR/crashes/TARGET-*.
# Exits non-zero if any target crashed, naming the input to add to the seed
# corpus (and to a regression test) once fixed.
set -uo pipefail
build=$1 seconds=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
status=0
for target in "$@"; do
  exe=$build/tests/fuzz_$target
  corpus=$build/corpus/$target
  crashes=$build/crashes
  mkdir -p "$corpus" "$crashes"
  dict=()
  if [[ -f $here/$target.dict ]]; then dict=(-dict="$here/$target.dict"); fi
  echo "fuzz: $target for ${seconds} s (seeds tests/fuzz/corpus/$target, new inputs $corpus)"
  log=$build/fuzz-$target.log
  # -max_len bounds an input (a request head is at most 8 KiB); -timeout and
  # -rss_limit_mb turn a hang or a runaway allocation into a finding.
  if ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      "$exe" -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$crashes/$target-" "${dict[@]}" \
      "$corpus" "$here/corpus/$target" >"$log" 2>&1; then
    grep -E "^stat::number_of_executed_units|^stat::new_units_added" "$log" | tr '\n' ' '
    echo "-> no crash"
  else
    status=1
    echo "fuzz: $target FAILED; the end of $log:"
    tail -40 "$log"
    echo "fuzz: reproduce with $exe $crashes/$target-*; once fixed, copy the input into"
    echo "      tests/fuzz/corpus/$target/ and add a regression test"
  fi
done
exit $status
