#!/usr/bin/env bash
# On-demand checks too long for CI (.ci/run stays under ~45 minutes):
#  - the SIGKILL crash loops at 200 iterations (rows 53 and 59; CI runs 40 and 25),
#  - every fuzz target for 10 minutes (CI runs 30 s each),
#  - the load harness at full size (figures for docs/src/performance.md).
set -euo pipefail
cd "$(dirname "$0")/.."
AIRLOCK_CRASH_ITERATIONS=200 cargo test --locked --test it -- storage::row53 storage::row59
fuzz/run-long.sh "${FUZZ_SECS:-600}"
cargo bench --locked --bench load -- --idle 5000 --sse-events 300 --sse-ms 10
