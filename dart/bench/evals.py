"""python -m dart.bench.evals: wall time of whole evaluations under each strategy, one `python -m dart.run` per
(eval, strategy), one after another on the same machine, with the load average before and after each.

    python -m dart.bench.evals                                   # perplexity, fidelity, drift x dense/static_prompt/dart
    python -m dart.bench.evals evals=[perplexity] strategies=[static_prompt,dart] out=/tmp/t   # conf/bench_evals.yaml

The time is results.json `timing.eval_s` (the evaluation, without loading the model) and the ratio to
static_prompt in the same run (the target of the fast teacher-forcing work: dynamic strategies at most 1.3x the
static prompt mask). Writes evals.json and evals.md into `out` (default benchmarks/eval_timing/). The model is
the run's: `model=...` and any `model.<key>=...` given here reach every run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dart.bench.common import Outputs, machine, run_bench

REPO = Path(__file__).resolve().parents[2]
# the README's settings of each eval (eval=drift is greedy generation: shortened here, 2 prompts x 200 tokens)
EVAL_ARGS = {"perplexity": ["eval=perplexity"], "fidelity": ["eval=fidelity"],
             "drift": ["eval=drift", "eval.limit=2", "eval.max_new_tokens=200"]}


def run_one(ev: str, strategy: str, extra: list[str], workdir: Path) -> dict:
    out = workdir / f"{ev}-{strategy}"
    args = [sys.executable, "-m", "dart.run", *EVAL_ARGS[ev], f"strategy={strategy}", "logger=none",
            "print_table=false", f"hydra.run.dir={out}", *extra]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(args[2:])} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    res = json.loads((out / "results.json").read_text())
    return {"eval": ev, "strategy": strategy, "eval_s": res["timing"]["eval_s"], "wall_s": round(wall, 2),
            "metrics": res["metrics"], "retraces": len((res.get("drift") or {}).get("triggers") or []),
            "effective_sparsity": (res.get("sparsity") or {}).get("effective"),  # decode (scored) tokens
            "loadavg_1m_before": round(load0, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2)}


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"Model `{res['model']}`, sparsity {res['sparsity']}; {m['processor']}, {m['cpu_count']} cores, torch "
             f"{m['torch']}. One `python -m dart.run` per row, one after another.", "",
             "| eval | strategy | eval s | × static_prompt | re-traces | effective sparsity | load before/after |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in res["rows"]:
        ratio = r.get("ratio_to_static_prompt")
        eff = r.get("effective_sparsity")
        lines.append(f"| {r['eval']} | {r['strategy']} | {r['eval_s']:.1f} | {'–' if ratio is None else f'{ratio:.2f}'} | "
                     f"{r['retraces']} | {'–' if eff is None else f'{eff:.3f}'} | {r['loadavg_1m_before']}/{r['loadavg_1m_after']} |")
    return "\n".join(lines) + "\n"


def model_args(cfg: DictConfig) -> list[str]:
    """The model of every run: model=<name> and the model.<key>=... overrides this bench was given."""
    from hydra.core.hydra_config import HydraConfig

    given = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return [f"model={cfg.model.name}", *(o for o in given if o.lstrip("+~").startswith("model."))]


def bench(cfg: DictConfig) -> dict:
    from dart.config_checks import check_sparsity
    from dart.errors import choice_error

    evals, strategies = [str(e) for e in cfg.evals], [str(s) for s in cfg.strategies]
    for e in evals:
        if e not in EVAL_ARGS:
            raise choice_error("evals entry", e, EVAL_ARGS)
    sparsity = check_sparsity(cfg.sparsity)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ev in evals:
            for s in strategies:
                print(f"[bench.evals] {ev} / {s} ...", flush=True)
                rows.append(run_one(ev, s, [f"sparsity={sparsity}", *model_args(cfg)], Path(tmp)))
    for r in rows:
        ref = next((x for x in rows if x["eval"] == r["eval"] and x["strategy"] == "static_prompt"), None)
        r["ratio_to_static_prompt"] = round(r["eval_s"] / ref["eval_s"], 3) if ref and ref["eval_s"] else None
    return {"model": cfg.model.name, "sparsity": sparsity, "machine": machine(), "rows": rows}


@hydra.main(version_base="1.3", config_path="../../conf", config_name="bench_evals")
def main(cfg: DictConfig) -> None:
    run_bench(cfg, bench, Outputs(json="evals.json", render=markdown, markdown="evals.md"), "bench.evals")


if __name__ == "__main__":
    main()
