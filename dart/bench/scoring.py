"""python -m dart.bench.scoring: how fast lm-eval scoring runs under each strategy, and how exact it is.

For every task (an offline stand-in: one-token answers such as boolq and mmlu, multi-token answers such as
arc_easy and hellaswag), batch size and strategy: one `lm_eval.simple_evaluate` through `DartLM` with the default
chunked teacher forcing. Reported per run: the time inside the loglikelihood path (`score_s`: tokenised requests
to log-likelihoods, what the strategy and the batch size change) and the whole call (`wall_s`), requests per
second, the model forwards and input positions run (padding included), the re-trace rounds caused by drift
triggers, accuracy, and the time relative to dense: the strategies are INTERLEAVED within each of `repeats` repeats
(dense, static_prompt, ..., then again), so `ratio_to_dense` is the median of the per-repeat PAIRED ratios against
dense of the same repeat, with a bootstrap 95% interval (`ratio_ci`). Exactness: the first `reference_limit`
documents of every task are scored again one request at a time, one forward per token (`forcing=reference`), and
`max_loglik_diff` is the largest |difference| of any log-likelihood (fp32) between the two; `same_choices` says
whether every document's chosen answer is the same.

The machine may be shared: the 1-minute load average is recorded before and after every run.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any

import hydra
from omegaconf import DictConfig

from dart.bench import scoring_report
from dart.bench.common import Outputs, dtype_name, load, machine, prepare, run_bench, time_scoring
from dart.progress import progress

OUTPUTS = Outputs(json="scoring.json", render=scoring_report.markdown, markdown="scoring.md", plot="scoring.png",
                  draw=scoring_report.plot)


def lm_eval_tasks(bench: str, cfg: DictConfig) -> list[str]:
    """The lm-eval tasks of a benchmark's offline stand-in; mmlu: its first `mmlu_subjects` subjects."""
    from dart.evals.tasks import OFFLINE_DIR, benchmark

    twin = benchmark(bench).offline_twin
    if bench != "mmlu":
        return [twin]
    return sorted(p.stem for p in (OFFLINE_DIR / "mmlu").glob("offline_mmlu_*.yaml"))[: int(cfg.mmlu_subjects)]


class Counter:
    """Forwards and input positions run by the model (a forward pre-hook)."""

    def __init__(self, model):
        self.forwards = self.positions = 0
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.forwards += 1
        self.positions += int(ids.numel())

    def close(self):
        self.handle.remove()


def run_once(model, tokenizer, strategy, tasks: list[str], shots: int, limit, batch_size: int, forcing: str) -> dict[str, Any]:
    import lm_eval

    from dart.evals.lm import DartLM
    from dart.evals.tasks import offline_task_manager

    lm = DartLM(model, tokenizer, strategy, batch_size=batch_size, forcing=forcing)
    spent = time_scoring(lm, model)
    c = getattr(strategy, "controller", None)
    triggers0 = len(c.counts.triggers) if c is not None else 0
    counter = Counter(model)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        res = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=shots, limit=limit, log_samples=True,
                                      task_manager=offline_task_manager(), bootstrap_iters=0, verbosity="ERROR")
    finally:
        counter.close()
    wall = time.perf_counter() - t0
    docs, lls, choice = {}, {}, {}
    for task in tasks:
        for s in res["samples"].get(task, []):
            key = f"{task}/{s['doc_id']}"
            lls[key] = [float(r[0][0]) for r in s["resps"]]
            choice[key] = max(range(len(lls[key])), key=lambda i: lls[key][i]) if lls[key] else None
            docs[key] = s.get("acc")
    accs = [res["results"][t]["acc,none"] for t in tasks if "acc,none" in res["results"].get(t, {})]
    requests = sum(len(v) for v in lls.values())
    return {
        "batch_size": batch_size, "forcing": forcing, "docs": len(docs), "requests": requests,
        "score_s": round(spent[0], 3), "wall_s": round(wall, 3),
        "requests_per_s": round(requests / spent[0], 2) if spent[0] > 0 else None,
        "forwards": counter.forwards, "positions": counter.positions,
        "triggers": (len(c.counts.triggers) - triggers0) if c is not None else 0,
        "acc": sum(accs) / len(accs) if accs else None, "scoring": dict(lm.stats),
        "loadavg_1m_before": round(load0, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "_lls": lls, "_choice": choice,
    }


def bench(cfg: DictConfig) -> dict[str, Any]:
    from dart.compose import build_strategy
    from dart.config_checks import check_sparsity
    from dart.errors import ConfigError
    from dart.evals.tasks import benchmark

    check_sparsity(cfg.sparsity)
    for t in cfg.tasks:
        benchmark(t)  # a clear error for an unknown name
    if not cfg.batch_sizes or any(int(b) < 1 for b in cfg.batch_sizes):
        raise ConfigError(f"batch_sizes={list(cfg.batch_sizes)} must be positive integers")
    ranking = cfg.ranking.name
    strategies = {name: build_strategy(name, sparsity=float(cfg.sparsity), ranking=ranking) for name in cfg.strategies}
    prepare(cfg, quiet=("lm_eval", "lm-eval", "datasets"))
    loaded, device = load(cfg)
    model, tok = loaded.model, loaded.tokenizer
    info = machine()
    from dart.stats import paired_ratio

    reps = int(cfg.get("repeats", 1))
    rows, checks = [], []
    n_runs = len(cfg.tasks) * len(strategies) * (len(cfg.batch_sizes) * reps + (1 if cfg.reference_limit else 0))
    with progress("scoring bench", n_runs, float(cfg.get("progress_s", 30))) as step:
        if cfg.warmup:
            run_once(model, tok, strategies["dense"] if "dense" in strategies else build_strategy("dense", 0.0, ranking),
                     lm_eval_tasks(cfg.tasks[0], cfg), benchmark(cfg.tasks[0]).num_fewshot, 2, 1, "chunked")
        for bench_name in cfg.tasks:
            b = benchmark(bench_name)
            tasks = lm_eval_tasks(bench_name, cfg)
            kind = "one-token" if bench_name in cfg.one_token else "multi-token"
            runs: dict[tuple, dict] = {}
            times: dict[tuple, list[float]] = {}
            for bs in cfg.batch_sizes:
                for rep in range(reps):  # interleaved: every strategy once per repeat
                    for name, strategy in strategies.items():
                        if name != "dense":
                            strategy.attach(model, tok)
                        try:
                            r = run_once(model, tok, strategy, tasks, b.num_fewshot, cfg.limit, int(bs), "chunked")
                        finally:
                            if name != "dense":
                                strategy.detach()
                        runs.setdefault((name, int(bs)), r)
                        times.setdefault((name, int(bs)), []).append(r["score_s"])
                        step()
            ref_limit = (cfg.reference_limits or {}).get(bench_name, cfg.reference_limit)
            for name, strategy in strategies.items():
                if not ref_limit:
                    continue
                if name != "dense":
                    strategy.attach(model, tok)
                try:
                    ref = run_once(model, tok, strategy, tasks, b.num_fewshot, int(ref_limit), 1, "reference")
                finally:
                    if name != "dense":
                        strategy.detach()
                step()
                for bs in cfg.batch_sizes:
                    fast = runs[name, int(bs)]
                    keys = [k for k in ref["_lls"] if k in fast["_lls"]]
                    diff = max((abs(a - x) for k in keys for a, x in zip(ref["_lls"][k], fast["_lls"][k])), default=None)
                    checks.append({"task": bench_name, "strategy": name, "batch_size": int(bs), "docs": len(keys),
                                   "max_loglik_diff": diff,
                                   "same_choices": all(ref["_choice"][k] == fast["_choice"][k] for k in keys),
                                   "reference_score_s": ref["score_s"], "reference_forwards": ref["forwards"]})
            for (name, bs), r in runs.items():
                mine = [ch for ch in checks if ch["task"] == bench_name and ch["strategy"] == name and ch["batch_size"] == bs]
                own = times[name, bs]
                score_s = statistics.median(own)
                med, ratios, ci = paired_ratio(own, times.get(("dense", bs)) or [])
                rows.append({"task": bench_name, "kind": kind, "lm_eval_tasks": tasks, "strategy": name,
                             "sparsity": 0.0 if name == "dense" else float(cfg.sparsity),
                             **{k: v for k, v in r.items() if not k.startswith("_")},
                             "score_s": round(score_s, 3), "score_s_all": own,
                             "requests_per_s": round(r["requests"] / score_s, 2) if score_s > 0 else None,
                             "ratio_to_dense": round(med, 3) if med is not None else None,
                             "ratio_all": [round(x, 4) for x in ratios],
                             "ratio_ci": [round(ci[0], 3), round(ci[1], 3)] if ci else None,
                             "max_loglik_diff": mine[0]["max_loglik_diff"] if mine else None,
                             "same_choices_as_reference": mine[0]["same_choices"] if mine else None})
    info["loadavg_1m_end"] = os.getloadavg()[0]
    return {"config": {"model": cfg.model.name, "device": device, "dtype": dtype_name(model),
                       "sparsity": float(cfg.sparsity), "ranking": ranking, "limit": cfg.limit,
                       "mmlu_subjects": int(cfg.mmlu_subjects), "reference_limit": cfg.reference_limit, "repeats": reps,
                       "batch_sizes": [int(b) for b in cfg.batch_sizes]},
            "machine": info, "model": loaded.info, "rows": rows, "exactness": checks}


@hydra.main(version_base="1.3", config_path="../../conf", config_name="bench_scoring")
def main(cfg: DictConfig) -> None:
    run_bench(cfg, bench, OUTPUTS, "scoring bench")


if __name__ == "__main__":
    main()
