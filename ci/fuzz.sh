#!/usr/bin/env bash
# Fuzzes every decoder of untrusted bytes (the targets in fuzz/fuzz_targets/)
# on the stable toolchain:
#   ci/fuzz.sh [SECONDS]        # SECONDS per target, default 60
# It installs cargo-fuzz (pinned) if missing, builds every target once with
# AddressSanitizer, optimisations, debug assertions and overflow checks
# (cargo-fuzz's default), then, one target after another: replays the
# target's known crashers (fuzz/regressions/<target>/), and fuzzes it for
# SECONDS on a copy of its checked-in corpus (fuzz/corpus/<target>/) in a
# temporary directory, so a run leaves the repository as it was. It prints
# one line per target (executions, executions per second, corpus growth,
# regressions) and fails if a regression input still crashes or a target
# crashed, leaked, ran out of memory or hung; logs and reproducers are then
# kept (the path is printed) and the script exits 1.
#
# Stable Rust rejects cargo-fuzz's `-Zsanitizer=address` (the one unstable
# flag it passes); RUSTC_BOOTSTRAP=1 lets the stable compiler accept it.
# Nothing else needs nightly. Set FUZZ_JOBS to change the build's
# parallelism (default 2), and FUZZ_TARGETS (names separated by spaces) to
# run only some targets, e.g. two shells each running half of them for a
# long run on a 2-core machine.
set -euo pipefail

secs="${1:-60}"
case "$secs" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz="$root/fuzz"
cargo_fuzz_version=0.13.2

export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS="${FUZZ_JOBS:-2}"
export CARGO_INCREMENTAL=0
# What `cargo fuzz run` sets for AddressSanitizer (the targets are run
# directly here, so that their artifacts go to the temporary directory).
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0"

if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $cargo_fuzz_version"; then
    echo "==> installing cargo-fuzz $cargo_fuzz_version"
    cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked -j "$CARGO_BUILD_JOBS"
fi

cd "$fuzz"
all_targets=$(cargo fuzz list)
targets="${FUZZ_TARGETS:-$all_targets}"
for t in $targets; do
    if ! echo "$all_targets" | grep -qx "$t"; then
        echo "FUZZ_TARGETS: no target named '$t' (there are: $(echo $all_targets))" >&2
        exit 2
    fi
done
echo "==> building $(echo $targets | wc -w) targets (ASan, release, debug assertions)"
cargo fuzz build
host=$(rustc -vV | sed -n 's/^host: //p')
bin="$fuzz/target/$host/release"

work=$(mktemp -d "${TMPDIR:-/tmp}/msgtransfer-fuzz.XXXXXX")
mkdir -p "$work/tmp"
keep=0
cleanup() {
    if [ "$keep" = 0 ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

summary=()
failed=()
for t in $targets; do
    # Known crashers first (fuzz/regressions/<target>/): each must pass
    # once the bug it found is fixed.
    regress=none
    if [ -d "$fuzz/regressions/$t" ] && [ -n "$(ls -A "$fuzz/regressions/$t")" ]; then
        n=$(find "$fuzz/regressions/$t" -type f | wc -l)
        echo "==> $t: replaying $n regression input(s)"
        if ! TMPDIR="$work/tmp" "$bin/$t" "$fuzz/regressions/$t"/* >"$work/$t.regressions.log" 2>&1; then
            regress="FAILED"
            failed+=("$t (regressions)")
            keep=1
            echo "---- $t: a regression input still crashes; last lines of $work/$t.regressions.log"
            grep -E "panicked at|^Running:|SUMMARY" "$work/$t.regressions.log" | tail -n 6 || true
        else
            regress="$n ok"
        fi
    fi
    mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
    if [ -d "$fuzz/corpus/$t" ]; then
        cp -R "$fuzz/corpus/$t/." "$work/corpus/$t/"
    fi
    seeds=$(find "$work/corpus/$t" -type f | wc -l)
    echo "==> $t: ${secs}s from $seeds seeds"
    log="$work/$t.log"
    set +e
    # TMPDIR: config_yaml keeps its copy of config/ there.
    TMPDIR="$work/tmp" "$bin/$t" "$work/corpus/$t" \
        -max_total_time="$secs" \
        -timeout=25 \
        -rss_limit_mb=2048 \
        -print_final_stats=1 \
        -artifact_prefix="$work/artifacts/$t/" \
        >"$log" 2>&1
    rc=$?
    set -e
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 || true)
    if [ -z "$runs" ] && [ -n "$done_line" ]; then
        runs=$(echo "$done_line" | awk '{print $2}')
        s=$(echo "$done_line" | awk '{print $5}')
        rate=$((runs / (s > 0 ? s : 1)))
    fi
    if [ -z "$runs" ]; then
        # A crash ends the run before the final stats: take the last status line.
        last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
        runs=$(echo "$last" | sed -n 's/^#\([0-9]*\).*/\1/p')
        rate=$(echo "$last" | sed -n 's/.*exec\/s: \([0-9]*\).*/\1/p')
    fi
    corpus=$(find "$work/corpus/$t" -type f | wc -l)
    if [ "$rc" = 0 ]; then
        verdict=ok
    else
        verdict="FAILED (exit $rc)"
        failed+=("$t")
        keep=1
        echo "---- $t: last lines of $log"
        tail -n 60 "$log"
        echo "---- reproducers: $(ls "$work/artifacts/$t" | sed "s|^|$work/artifacts/$t/|" | tr '\n' ' ')"
    fi
    summary+=("$(printf '%-13s runs %10s  execs/s %7s  corpus %4s -> %-5s %-16s regressions: %s' \
        "$t" "${runs:-?}" "${rate:-?}" "$seeds" "$corpus" "$verdict" "$regress")")
done

echo
echo "==> fuzz summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]}; logs and reproducers kept in $work"
    echo "replay one with: $bin/<target> <reproducer>"
    exit 1
fi
