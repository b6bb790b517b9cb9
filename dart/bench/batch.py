"""Batch-size benchmark of eval=ten: the lm-eval harness (DartLM) with a pruned model at several batch sizes.

    python -m dart.bench.batch [tasks=[boolq,rte]] [limit=20] [batch_sizes=[1,8]] [out=DIR]   # see conf/bench_batch.yaml

Runs the offline stand-ins of the named benchmarks (real offline items, lm-eval's real prompts; not the
benchmarks themselves) on the embedded SmolLM2-135M with strategy=dart at 50% (by default), once per batch size,
and checks that the batch size changes nothing: accuracy identical, per-request log-likelihoods equal within float
tolerance (per-sequence statistics and masks, docs/method.md section 6). Writes results.json and results.md (items/s,
speed-up over the first batch size, accuracy at each batch size) into `out`; exit code 1 if the accuracy changed.

Timing: `score_s` is the time spent inside the harness's loglikelihood path (tokenised requests -> log-likelihoods:
the part the batch size can speed up); `wall_s` is the whole lm_eval.simple_evaluate call (task loading and
metric bookkeeping included). items/s = documents / score_s. Every request is scored as teacher-forced decoding
(dart.engine.forcing, chunked; requests sharing a prompt share its forward) except under protocol=compat (one
pass): `decoded` counts the former, `scoring` holds DartLM's counters. The machine may be shared: the 1-minute load
average before and after each run is recorded, and timings taken under load are upper bounds.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

import hydra
from omegaconf import DictConfig

from dart.bench.common import Outputs, dtype_name, load, machine, prepare, run_bench, strategy_of, time_scoring

STRATEGIES = ("dart", "griffin", "static_prompt", "dense")


def check(cfg: DictConfig) -> list[Any]:
    """Fail before any model loads; returns the Benchmark of each task."""
    from dart.config_checks import check_sparsity
    from dart.errors import ConfigError, choice_error
    from dart.evals.tasks import benchmark

    check_sparsity(cfg.sparsity)
    if cfg.strategy.name not in STRATEGIES:
        raise choice_error("strategy", cfg.strategy.name, STRATEGIES)
    if int(cfg.limit) < 1:
        raise ConfigError(f"limit={cfg.limit} must be >= 1")
    sizes = [int(b) for b in cfg.batch_sizes or []]
    if not sizes or any(b < 1 for b in sizes):
        raise ConfigError(f"batch_sizes={sizes} must be positive integers")
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"batch_sizes={sizes} has repeats")
    return [benchmark(str(t).removeprefix("offline_")) for t in cfg.tasks]


def run_once(model, tokenizer, strategy, task: str, limit: int, batch_size: int, manager) -> dict[str, Any]:
    """One lm_eval.simple_evaluate of `task` at `batch_size`; per-request log-likelihoods and timings."""
    import lm_eval

    from dart.evals.lm import DartLM

    lm = DartLM(model, tokenizer, strategy, batch_size=batch_size)
    spent = time_scoring(lm, model)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = lm_eval.simple_evaluate(model=lm, tasks=[task], limit=limit, task_manager=manager, log_samples=True,
                                  bootstrap_iters=0, verbosity="ERROR")
    wall = time.perf_counter() - t0
    samples = sorted(res["samples"][task], key=lambda s: s["doc_id"])
    lls = [[float(r[0][0]) for r in s["resps"]] for s in samples]
    metrics = res["results"][task]
    docs = len(samples)
    return {
        "task": task, "batch_size": batch_size, "docs": docs, "requests": sum(len(x) for x in lls),
        "decoded": lm.stats["requests"] - lm.stats["one_pass"], "scoring": dict(lm.stats),
        "wall_s": round(wall, 3), "score_s": round(spent[0], 3),
        "items_per_s": round(docs / spent[0], 3) if spent[0] > 0 else None,
        "acc": metrics.get("acc,none"), "acc_norm": metrics.get("acc_norm,none"),
        "loadavg_1m_before": round(load0, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "loglikelihoods": lls, "per_doc_acc": [s.get("acc") for s in samples],
    }


def compare(rows: list[dict]) -> dict[str, Any]:
    """Per task: is every batch size's accuracy (and per-document correctness) identical to the first one's,
    and the largest log-likelihood difference."""
    out = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        base = mine[0]
        diff = max((abs(a - b) for r in mine[1:] for x, y in zip(base["loglikelihoods"], r["loglikelihoods"])
                    for a, b in zip(x, y)), default=0.0)
        out[task] = {
            "acc_identical": all(r["acc"] == base["acc"] and r["acc_norm"] == base["acc_norm"] for r in mine),
            "per_doc_identical": all(r["per_doc_acc"] == base["per_doc_acc"] for r in mine),
            "max_abs_loglikelihood_diff": diff,
        }
    return out


def markdown(res: dict[str, Any]) -> str:
    c, m = res["config"], res["machine"]
    lines = [
        "# eval=ten: harness speed against batch size",
        "",
        f"Model {c['model']} ({c['device']}, {c['dtype']}), strategy={c['strategy']} at sparsity {c['sparsity']}, "
        f"{c['limit']} documents per task (OFFLINE STAND-INS: real offline items with lm-eval's prompts, not the "
        f"benchmarks). {m['cpu_count']} CPUs, {m['torch_threads']} torch threads; 1-minute load average "
        f"{m['loadavg_1m_start']} at the start, {m['loadavg_1m_end']} at the end (the machine was shared: "
        "timings are upper bounds).",
        "",
        "items/s = documents / time in the loglikelihood path; speed-up against batch "
        f"{c['batch_sizes'][0]}; decoded = requests scored as teacher-forced decoding (dart.engine.forcing, "
        "chunked; requests that share a prompt share its forward), all but those of protocol=compat (one pass).",
        "",
        "| task | batch | docs | requests | decoded | score s | wall s | items/s | speed-up | acc | acc_norm | load 1m |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    fmt = lambda v, d=3: "—" if v is None else f"{v:.{d}f}"  # noqa: E731
    for r in res["rows"]:
        base = next(x for x in res["rows"] if x["task"] == r["task"])
        speedup = base["score_s"] / r["score_s"] if r["score_s"] else None
        lines.append(f"| {r['task']} | {r['batch_size']} | {r['docs']} | {r['requests']} | {r['decoded']} | "
                     f"{fmt(r['score_s'], 2)} | {fmt(r['wall_s'], 2)} | {fmt(r['items_per_s'], 2)} | "
                     f"{fmt(speedup, 2)}x | {fmt(r['acc'])} | {fmt(r['acc_norm'])} | {r['loadavg_1m_before']} |")
    lines += ["", "| task | accuracy identical at every batch size | per-document identical | max abs log-likelihood diff |",
              "|---|---|---|---:|"]
    for task, chk in res["checks"].items():
        lines.append(f"| {task} | {'yes' if chk['acc_identical'] else 'NO'} | "
                     f"{'yes' if chk['per_doc_identical'] else 'NO'} | {chk['max_abs_loglikelihood_diff']:.2e} |")
    return "\n".join(lines) + "\n"


def bench(cfg: DictConfig) -> dict[str, Any]:
    from dart.evals.tasks import offline_task_manager

    benches = check(cfg)
    load_start = os.getloadavg()
    prepare(cfg, quiet=("lm-eval", "lm_eval"))
    name, sizes = cfg.strategy.name, [int(b) for b in cfg.batch_sizes]
    strategy = strategy_of(cfg)  # its checks run before the model loads
    loaded, device = load(cfg)
    model, tok = loaded.model, loaded.tokenizer
    if name != "dense":
        strategy.attach(model, tok)
    manager = offline_task_manager()
    tasks = [b.offline_twin for b in benches]
    try:
        if cfg.warmup:  # first-call costs (kernels, lazy imports, task indexing) out of the timings
            run_once(model, tok, strategy, tasks[0], 1, sizes[0], manager)
        rows = []
        for task in tasks:
            for bs in sizes:
                row = run_once(model, tok, strategy, task, int(cfg.limit), bs, manager)
                rows.append(row)
                print(f"[bench.batch] {task} batch {bs}: {row['docs']} docs, {row['requests']} requests "
                      f"({row['decoded']} decoded) in {row['score_s']:.2f} s, acc {row['acc']}, "
                      f"load {row['loadavg_1m_before']}", flush=True)
    finally:
        summary = strategy.summary() if name != "dense" else {}
        if name != "dense":
            strategy.detach()
    info = machine()
    info.update(loadavg_1m=load_start[0], loadavg_1m_start=round(load_start[0], 2),
                loadavg_start=[round(x, 2) for x in load_start], loadavg_1m_end=round(os.getloadavg()[0], 2),
                loadavg_end=[round(x, 2) for x in os.getloadavg()])
    return {
        "schema": 1,
        "config": {"model": cfg.model.name, "device": device, "dtype": dtype_name(model),
                   "strategy": name, "sparsity": float(cfg.sparsity), "limit": int(cfg.limit),
                   "batch_sizes": sizes, "tasks": tasks,
                   "spec": summary.get("strategy", {}).get("spec")},
        "machine": info,
        "rows": rows,
        "checks": compare(rows),
        "note": "offline stand-ins (real offline items, lm-eval prompts), not the benchmarks; timings on a shared "
                "machine are upper bounds",
        "finite": all(math.isfinite(x) for r in rows for lls in r["loglikelihoods"] for x in lls),
    }


@hydra.main(version_base="1.3", config_path="../../conf", config_name="bench_batch")
def main(cfg: DictConfig) -> None:
    res = run_bench(cfg, bench, Outputs(json="results.json", render=markdown, markdown="results.md"), "batch bench")
    if not all(c["acc_identical"] for c in res["checks"].values()):
        print("[bench.batch] accuracy CHANGED with the batch size", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
