#!/usr/bin/env bash
# GPU check: decode speed on Llama-3.1-8B shapes and scoring speed on a tiny model, as JSON under benchmarks/gpu/.
#
#   bash scripts/gpu_check.sh                 # one CUDA GPU (H100/H200: about 5 minutes, under 8)
#   bash scripts/gpu_check.sh --smoke         # the same two benches, small, on the CPU (CI runs this, ~1 minute)
#   bash scripts/gpu_check.sh --out DIR       # write under DIR instead of benchmarks/gpu (or benchmarks/gpu/smoke)
#
# 1. python -m dart.bench: Llama-3.1-8B architecture with random weights (no download), bfloat16, CUDA: dense,
#    masked and compacted (batch 8: the rows' union) FFN execution at 50% and 70% sparsity, batch 1 and 8, in the
#    lean decode loop (plus transformers' generate at batch 1), each against its bytes-bound limit (no per-token
#    `sparse` mode: its kernels are the CPU's).
# 2. python -m dart.bench.scoring (if present): lm-eval scoring time per strategy on tiny_llama, batch 1 and 8.
# Needs the project's environment (bash setup.sh: hydra, lm-eval, and the embedded SmolLM2 tokenizer, which stands in
# for Llama's when the hub is out of reach). PYTHON=... picks another interpreter.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

smoke=0
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --out) out="${2:?--out needs a folder}"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (use --smoke, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false

if [ "$smoke" = 1 ]; then
  out="${out:-benchmarks/gpu/smoke}"
  decode=(model=tiny_llama device=cpu dtype=float32 "batch_sizes=[1,2]" "sparsities=[0.5,0.7]" "loops=[lean]"
          "modes=[dense,masked,compacted,shared]"
          "batch_loops=[lean]" new_tokens=6 prompt_tokens=16 warmup=0 repeats=1 remask_demo=false threads=1)
  scoring=(model=tiny_llama device=cpu dtype=float32 "tasks=[boolq]" "strategies=[dense,dart]" "batch_sizes=[1,2]"
           limit=2 reference_limit=1 warmup=false repeats=2 threads=1)
else
  out="${out:-benchmarks/gpu}"
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "error: torch sees no CUDA device here; run bash scripts/gpu_check.sh --smoke for the CPU version" >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  decode=(model=llama3_8b model.init=random dtype=bfloat16 device=cuda "batch_sizes=[1,8]" "sparsities=[0.5,0.7]"
          "modes=[dense,masked,compacted,shared]"
          "loops=[lean,hf]" "batch_loops=[lean]" new_tokens=128 prompt_tokens=64 warmup=1 repeats=3 remask_demo=false)
  scoring=(model=tiny_llama device=cuda "tasks=[boolq,arc_easy]" "strategies=[dense,static_prompt,griffin,dart]"
           "batch_sizes=[1,8]" limit=20 reference_limit=2)
fi

t0=$(date +%s)
echo "[gpu_check] decode bench: ${decode[*]}"
"$PY" -m dart.bench "${decode[@]}" "out=$out/decode"
if [ -f dart/bench/scoring.py ]; then
  echo "[gpu_check] scoring bench: ${scoring[*]}"
  "$PY" -m dart.bench.scoring "${scoring[@]}" "out=$out/scoring"
else
  echo "[gpu_check] dart/bench/scoring.py is not in this checkout: scoring bench skipped"
fi
echo "[gpu_check] done in $(( $(date +%s) - t0 )) s: $out/decode/bench.json$( [ -f dart/bench/scoring.py ] && echo " $out/scoring/scoring.json")"
