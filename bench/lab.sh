#!/usr/bin/env bash
# bench/lab.sh [BUILD_DIR] [RUNS]: the policy lab's throughput benchmark.
#
# 10,000 simulated jobs with the default policy (examples/policy.lua), through the real
# stages and job-store SQL on the lab's private PostgreSQL and Redis: 32 simulated
# workers, and the scheduler's batch sizes and unfinished-jobs cap raised to 32 (as a
# deployment with 32 workers would set them). Each run is a fresh process; the figure
# is the wall time of the whole command (server start-up included) and the lab's own
# run time (from the policy's init to its shutdown, outputs included). Prints one line
# per run with the lab's --profile (wall-clock seconds in ticks, per stage, and in the
# simulated workers), then the medians.
set -euo pipefail
BUILD=${1:-build}
RUNS=${2:-3}
HOST="$BUILD/loreley-host"
SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mktemp -d /tmp/loreley-bench-lab-XXXXXX)
chmod 755 "$OUT"
trap 'rm -rf "$OUT"' EXIT

ARGS=(--simulate --no-progress --jobs 10000 --workers 32 --landscape smooth
      --latency exponential:300
      --set SCHEDULER_MAX_UNFINISHED_JOBS=32 --set SCHEDULER_SCHEDULE_BATCH_SIZE=32
      --set SCHEDULER_DISPATCH_BATCH_SIZE=32 --set SCHEDULER_INGEST_BATCH_SIZE=32
      --work-dir "$OUT/servers")

walls=()
runs=()
for i in $(seq 1 "$RUNS"); do
  start=$(date +%s.%N)
  output=$("$HOST" "${ARGS[@]}" --profile --out "$OUT/out$i" "$SRC/examples/policy.lua")
  end=$(date +%s.%N)
  line=$(echo "$output" | head -1)
  wall=$(echo "$end - $start" | bc)
  run=$(echo "$line" | sed -n 's/.*(\([0-9.]*\) s)$/\1/p')
  echo "run $i: wall ${wall} s, lab run ${run} s: $line"
  echo "$output" | grep -E '^(profile|  stage)' | sed 's/^/    /'
  walls+=("$wall")
  runs+=("$run")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo "median over $RUNS runs: wall $(median "${walls[@]}") s, lab run $(median "${runs[@]}") s"
