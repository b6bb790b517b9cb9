#!/usr/bin/env bash
# Run offline experiments one after another (never two at once: each uses both cores), logging wall time and the load
# average at start and end of each into benchmarks/sweeps/sweep_times.log, and exporting each finished sweep's
# results into benchmarks/sweeps/<name>/ at once (multirun/ is not committed).
#   bash scripts/run_sweeps.sh EXPERIMENT [EXPERIMENT ...]     (extra Hydra overrides: DART_SWEEP_ARGS)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG=benchmarks/sweeps/sweep_times.log
now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
for exp in "$@"; do
  echo "$(now) START $exp load=$(load)" >> "$LOG"
  t0=$(date +%s)
  # shellcheck disable=SC2086
  .venv/bin/python -m dart.run -m "+experiment=$exp" ${DART_SWEEP_ARGS:-}
  rc=$?
  echo "$(now) END $exp rc=$rc wall_s=$(( $(date +%s) - t0 )) load=$(load)" >> "$LOG"
  bash scripts/export_sweep.sh "multirun/$exp"
done
