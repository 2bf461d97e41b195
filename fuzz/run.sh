#!/usr/bin/env bash
# `make fuzz`: libFuzzer (coverage-guided) on every target for FUZZ_SECONDS each, corpus seeded
# from the real files; prints executions, coverage and crashes per target. Crashing inputs land
# in target/fuzz/artifacts/<target>/ (copy them to fuzz/regressions/<target>/ once fixed).
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
bin=${FUZZ_BIN:?FUZZ_BIN: the instrumented fuzz binary}
targets=${FUZZ_TARGETS:-$(ls target/fuzz/corpus)}
failed=0
printf '%-12s %10s %8s %6s %6s %s\n' target executions exec/s cov crashes budget
for t in $targets; do
    corpus=target/fuzz/corpus/$t
    artifacts=target/fuzz/artifacts/$t
    mkdir -p "$corpus" "$artifacts"
    log=target/fuzz/$t.log
    # -timeout: an input running over 10 s is a hang; -rss_limit_mb: an input making a parser
    # allocate gigabytes (a header claiming a huge size) is a crash too.
    # New inputs go to the first folder; the kept regressions are read too.
    FUZZ_TARGET=$t timeout $((seconds + 60)) "$bin" "$corpus" $(ls -d "fuzz/regressions/$t" 2>/dev/null) \
        -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    crashes=$(find "$artifacts" -type f | wc -l)
    printf '%-12s %10s %8s %6s %6s %ss\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$crashes" "$seconds"
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        failed=1
        echo "  $t: exit $rc; see $log"
        grep -m3 -E 'panicked|ERROR|SUMMARY' "$log" | sed 's/^/    /'
    fi
done
exit $failed
