#!/usr/bin/env bash
# Copy finished sweeps into benchmarks/sweeps/ for committing: each job's results.json and its small per-sample
# files (switch_samples.jsonl, summaries.jsonl, drift_samples.jsonl, detector_samples.jsonl), and the sweep's multirun.yaml (so
# `python -m dart.tables` knows which jobs were planned); nothing else (no W&B, logs, plots).
#   bash scripts/export_sweep.sh multirun/switch_offline multirun/ablation_gain_offline
#   python -m dart.tables benchmarks/sweeps/switch_offline ...      # the tables from the committed copies
# It refuses to replace a committed sweep whose complete jobs the source does not all hold complete (a stale or
# interrupted multirun folder would otherwise overwrite finished results); EXPORT_FORCE=1 replaces it anyway.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ $# -ge 1 ] || { echo "usage: bash scripts/export_sweep.sh multirun/NAME [multirun/NAME ...]" >&2; exit 2; }
for src in "$@"; do
  src="${src%/}"
  [ -d "$src" ] || { echo "error: $src is not a folder" >&2; exit 2; }
  name="$(basename "$src")"
  dst="benchmarks/sweeps/$name"
  complete() { (cd "$1" && grep -rl --include=results.json '"status": *"complete"' . 2>/dev/null | sort) || true; }
  if [ -d "$dst" ] && [ "${EXPORT_FORCE:-0}" != 1 ]; then
    lost=$(comm -23 <(complete "$dst") <(complete "$src") | wc -l)
    if [ "$lost" -gt 0 ]; then
      echo "error: $src holds $lost job(s) fewer complete than the committed $dst; not replaced (EXPORT_FORCE=1 to replace)" >&2
      exit 1
    fi
  fi
  rm -rf "$dst"
  mkdir -p "$dst"
  [ -f "$src/multirun.yaml" ] && cp "$src/multirun.yaml" "$dst/"
  n=0
  while IFS= read -r -d '' f; do
    rel="${f#"$src"/}"
    mkdir -p "$dst/$(dirname "$rel")"
    cp "$f" "$dst/$rel"
    n=$((n + 1))
  done < <(find "$src" \( -name results.json -o -name switch_samples.jsonl -o -name summaries.jsonl \
                -o -name drift_samples.jsonl -o -name detector_samples.jsonl \) -not -path "*/wandb/*" -print0)
  echo "[export] $src -> $dst ($n files)"
done
