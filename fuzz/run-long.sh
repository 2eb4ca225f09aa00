#!/usr/bin/env bash
# On demand: every fuzz target for SECS seconds (default 600), two at a time on two cores.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
targets=(head chunk authority ip service_file record scrub config ws)
cargo +nightly fuzz build
for ((i = 0; i < ${#targets[@]}; i += 2)); do
    for t in "${targets[@]:i:2}"; do
        cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 > "/tmp/fuzz-$t.log" 2>&1 &
    done
    wait
done
for t in "${targets[@]}"; do
    echo "$t: $(grep -E 'Done [0-9]+ runs' "/tmp/fuzz-$t.log" | tail -1)"
done
