"""Batch-size benchmark of eval=ten: the lm-eval harness (DartLM) with a pruned model at several batch sizes.

    python -m dart.evals.batch_bench [--tasks boolq rte] [--limit 20] [--batch-sizes 1 8] [--out DIR]

Runs the offline stand-ins of the named benchmarks (real offline items, lm-eval's real prompts; not the
benchmarks themselves) on the embedded SmolLM2-135M with strategy=dart at 50% (by default), once per batch size,
and checks that the batch size changes nothing: accuracy identical, per-request log-likelihoods equal within float
tolerance (per-sequence statistics and masks, method.md section 6). Writes results.json and results.md (items/s,
speed-up over the first batch size, accuracy at each batch size) into --out.

Timing: `score_s` is the time spent inside the harness's loglikelihood path (tokenised requests -> log-likelihoods:
the part the batch size can speed up); `wall_s` is the whole lm_eval.simple_evaluate call (task loading and
metric bookkeeping included). items/s = documents / score_s. Requests whose continuation is long enough for DART's
drift detector to act (m + W tokens or more) are scored as teacher-forced decoding, one token per forward at batch
1 whatever the batch size: their count is reported as `decoded`. The machine may be shared: the 1-minute load
average before and after each run is recorded, and timings taken under load are upper bounds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

STRATEGIES = ("dart", "griffin", "static_prompt", "dense")
REPO = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dart.evals.batch_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["boolq", "rte"],
                   help="benchmark names (their offline stand-ins run; default boolq rte: one-token answers, the "
                        "batched path); tasks with long answers (arc_easy, hellaswag) exercise the decoded path")
    p.add_argument("--limit", type=int, default=20, help="documents per task (default 20)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8], help="batch sizes (default 1 8)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "eval_batch"), help="output folder")
    p.add_argument("--model", default="smollm2_135m", help="a conf/model/<name>.yaml (default smollm2_135m)")
    p.add_argument("--strategy", default="dart", choices=STRATEGIES, help="conf/strategy/<name>.yaml (default dart)")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed one-document warm-up run")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> list[Any]:
    """Fail before any model loads; returns the Benchmark of each task."""
    from dart.config_checks import check_sparsity
    from dart.errors import ConfigError
    from dart.evals.tasks import benchmark

    check_sparsity(args.sparsity)
    if args.limit < 1:
        raise ConfigError(f"--limit={args.limit} must be >= 1")
    if not args.batch_sizes or any(b < 1 for b in args.batch_sizes):
        raise ConfigError(f"--batch-sizes={args.batch_sizes} must be positive integers")
    if len(set(args.batch_sizes)) != len(args.batch_sizes):
        raise ConfigError(f"--batch-sizes={args.batch_sizes} has repeats")
    if not (REPO / "conf" / "model" / f"{args.model}.yaml").is_file():
        raise ConfigError(f"--model={args.model}: no conf/model/{args.model}.yaml")
    return [benchmark(t.removeprefix("offline_")) for t in args.tasks]


def load_strategy(name: str, sparsity: float):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "conf" / "strategy" / f"{name}.yaml")
    return instantiate(cfg, sparsity=float(sparsity), ranking="magnitude", _convert_="all")


def run_once(model, tokenizer, strategy, task: str, limit: int, batch_size: int, manager) -> dict[str, Any]:
    """One lm_eval.simple_evaluate of `task` at `batch_size`; per-request log-likelihoods and timings."""
    import lm_eval
    import torch

    from dart.evals.harness import DartLM

    lm = DartLM(model, tokenizer, strategy, batch_size=batch_size)
    inner = lm._loglikelihood_tokens
    spent = [0.0]

    def timed(*a, **kw):
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        t = time.perf_counter()
        out = inner(*a, **kw)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        spent[0] += time.perf_counter() - t
        return out

    lm._loglikelihood_tokens = timed
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
        "decoded": lm.exact_requests, "wall_s": round(wall, 3), "score_s": round(spent[0], 3),
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
        f"{c['batch_sizes'][0]}; decoded = requests scored as teacher-forced decoding (continuations of at least "
        "m + W tokens, where DART's detector can act), which run one token per forward at any batch size.",
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


def main(argv: list[str] | None = None) -> int:
    from dart.errors import DartError

    args = parse_args(argv)
    try:
        benches = check_args(args)
        res = bench(args, benches)
    except DartError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from dart.results import write_json_atomic

    write_json_atomic(out / "results.json", res)
    (out / "results.md").write_text(markdown(res))
    print(markdown(res))
    print(f"[batch_bench] wrote {out / 'results.json'} and {out / 'results.md'}")
    ok = all(c["acc_identical"] for c in res["checks"].values())
    if not ok:
        print("[batch_bench] accuracy CHANGED with the batch size", file=sys.stderr)
    return 0 if ok else 1


def bench(args: argparse.Namespace, benches) -> dict[str, Any]:
    load_start = os.getloadavg()
    import torch
    from omegaconf import OmegaConf

    from dart.evals.tasks import offline_task_manager
    from dart.models.loading import load_model, resolve_device
    from dart.pipeline import _quiet_libraries, versions

    _quiet_libraries()
    import logging

    for name in ("lm-eval", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    strategy = load_strategy(args.strategy, args.sparsity)  # its checks run before the model loads
    device = resolve_device(args.device)
    loaded = load_model(OmegaConf.load(REPO / "conf" / "model" / f"{args.model}.yaml"), device=device, dtype=args.dtype)
    model, tok = loaded.model, loaded.tokenizer
    if args.strategy != "dense":
        strategy.attach(model, tok)
    manager = offline_task_manager()
    tasks = [b.offline_twin for b in benches]
    try:
        if not args.no_warmup:  # first-call costs (kernels, lazy imports, task indexing) out of the timings
            run_once(model, tok, strategy, tasks[0], 1, args.batch_sizes[0], manager)
        rows = []
        for task in tasks:
            for bs in args.batch_sizes:
                row = run_once(model, tok, strategy, task, args.limit, bs, manager)
                rows.append(row)
                print(f"[batch_bench] {task} batch {bs}: {row['docs']} docs, {row['requests']} requests "
                      f"({row['decoded']} decoded) in {row['score_s']:.2f} s, acc {row['acc']}, "
                      f"load {row['loadavg_1m_before']}", flush=True)
    finally:
        summary = strategy.summary() if args.strategy != "dense" else {}
        if args.strategy != "dense":
            strategy.detach()
    return {
        "schema": 1,
        "config": {"model": args.model, "device": device, "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                   "strategy": args.strategy, "sparsity": args.sparsity, "limit": args.limit,
                   "batch_sizes": list(args.batch_sizes), "tasks": tasks,
                   "spec": summary.get("strategy", {}).get("spec")},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "loadavg_1m_start": round(load_start[0], 2), "loadavg_start": [round(x, 2) for x in load_start],
                    "loadavg_1m_end": round(os.getloadavg()[0], 2),
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "versions": versions(),
        "rows": rows,
        "checks": compare(rows),
        "note": "offline stand-ins (real offline items, lm-eval prompts), not the benchmarks; timings on a shared "
                "machine are upper bounds",
        "finite": all(math.isfinite(x) for r in rows for lls in r["loglikelihoods"] for x in lls),
    }


if __name__ == "__main__":
    sys.exit(main())
