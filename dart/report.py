"""Console output of a run: a short table of its metrics, sparsity and overhead.

The title and the paths are printed as plain lines, never through rich's wrapping (rich wraps at 80 columns when
stdout is not a terminal, which would break a path in two)."""
from __future__ import annotations

from pathlib import Path

from dart.results import matched_entries

_SAID: set[str] = set()


def say_once(note: str) -> None:
    """Print a remark once per process: a sweep that runs its jobs in one process says it once, not once per job."""
    if note not in _SAID:
        _SAID.add(note)
        print(f"[dart] note: {note}", flush=True)


def _fmt(v, sign: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:+.4g}" if sign else f"{v:.4g}"
    return str(v)


def title(results: dict) -> str:
    """"Llama-3.1-8B shape, random, 2 layers | strategy=dart | sparsity=0.7 | eval=smoke"; dense never shows a
    sparsity (it ignores it)."""
    from dart.models.names import model_label

    cfg = results.get("config", {})
    strategy = (cfg.get("strategy") or {}).get("name")
    parts = [model_label(cfg.get("model") or {}, results.get("model")), f"strategy={strategy}"]
    if strategy != "dense":
        parts.append(f"sparsity={cfg.get('sparsity')}")
    parts.append(f"eval={(cfg.get('eval') or {}).get('name')}")
    return " | ".join(parts)


def _with_ci(m: dict, key: str, sign: bool = False) -> str:
    v = m.get(key)
    if v is None:
        return "-"
    lo, hi = m.get(f"{key}_lo"), m.get(f"{key}_hi")
    if lo is None or hi is None:
        return _fmt(v, sign)
    return f"{_fmt(v, sign)} [{_fmt(lo, sign)}, {_fmt(hi, sign)}]"


def _subset(metrics: dict, ev: str, sub: str) -> dict:
    return {key.split("/", 2)[2]: v for key, v in metrics.items() if key.startswith(f"{ev}/{sub}/")}


def comparison_table(results: dict):
    """Dense beside the pruned model on the same text, for evaluations that score both (eval=switch and its
    `overview` preset: the main job): perplexity, KL and top-1 agreement against dense per subset, sparsity, cost;
    with `eval.matched` (the main job: static_prompt) a third column, that strategy at the run's effective sparsity."""
    from rich.table import Table

    metrics = results.get("metrics") or {}
    subsets = []
    for k in metrics:
        parts = k.split("/")
        if len(parts) == 3 and parts[2] == "ppl_dense" and parts[1] not in subsets:
            subsets.append(parts[1])
    if not subsets:
        return None
    ev = k.split("/")[0]
    cfg = results.get("config", {})
    strategy = (cfg.get("strategy") or {}).get("name")
    label = strategy if strategy == "dense" else f"{strategy} {round(100 * float(cfg.get('sparsity') or 0))}%"
    run_sp = results.get("sparsity") or {}
    columns = [(label, metrics, run_sp, run_sp.get("effective_by_kind") or {})]
    heading = "dense and the pruned model on the same text"
    matched = matched_entries(results)
    for m in matched:
        sp = m.get("sparsity") or {}
        by_kind = {k: v.get("effective") for k, v in (sp.get("by_kind") or {}).items()}
        columns.append((f"{m['strategy']} {100 * sp['target']:.1f}%", m.get("metrics") or {}, sp, by_kind))
    if matched:
        heading = f"dense, {strategy}, and {' and '.join(m['strategy'] for m in matched)} at {strategy}'s effective sparsity"
    table = Table(title=f"{heading} (95% bootstrap intervals over samples)")
    for name in ("", "dense", *(c[0] for c in columns)):
        table.add_column(name, justify="right" if name else "left")
    for sub in subsets:
        ms = [_subset(c[1], ev, sub) for c in columns]
        n = ms[0].get("n")
        name = f"{sub} (n={int(n)})" if n else sub
        table.add_row(f"{name}: perplexity", _with_ci(ms[0], "ppl_dense"), *(_with_ci(m, "ppl") for m in ms))
        table.add_row(f"{name}: KL(dense || pruned)", "0", *(_with_ci(m, "kl") for m in ms))
        table.add_row(f"{name}: top-1 agreement", "1", *(_with_ci(m, "top1") for m in ms))
        if ms[0].get("retraces") is not None:
            table.add_row(f"{name}: re-traces per sample", "0", *(_with_ci(m, "retraces") for m in ms))
        if any(c[3].get(sub) is not None for c in columns):
            table.add_row(f"{name}: sparsity effective", "0", *(_fmt(c[3].get(sub)) for c in columns))
    for key, text in (("achieved", "sparsity achieved (the masks)"), ("effective", "sparsity effective (skipped)")):
        if columns[0][2].get(key) is not None:
            table.add_row(text, "0", *(_fmt(c[2].get(key)) for c in columns))
    return table


def matched_reading(results: dict) -> list[str]:
    """One line per eval.matched strategy on its comparison over all samples: the paired KL difference, run -
    matched, its interval, and what it says (negative: the run is closer to dense)."""
    lines = []
    run = ((results.get("config") or {}).get("strategy") or {}).get("name")
    for matched in matched_entries(results):
        paired = {k.split("/", 1)[1]: v for k, v in (matched.get("paired") or {}).items()}
        if paired.get("all/kl") is None:
            continue
        other = matched["strategy"]
        lo, hi = paired.get("all/kl_lo"), paired.get("all/kl_hi")
        if lo == hi == 0:
            verdict = "identical on every sample"
        elif hi is not None and hi < 0:
            verdict = f"{run} is closer to dense than {other} at the same effective sparsity"
        elif lo is not None and lo > 0:
            verdict = f"{other} is closer to dense than {run} at the same effective sparsity"
        else:
            verdict = "no difference resolved at this n"
        lines.append(f"matched compute: KL {run} - {other}, paired over the same {int(paired['all/n'])} samples: "
                     f"{_with_ci(paired, 'all/kl', sign=True)} at {100 * matched['sparsity']['target']:.1f}% "
                     f"effective sparsity: {verdict}")
    return lines


def print_run(results: dict, run_dir: Path | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    side_by_side = comparison_table(results)
    if side_by_side is not None:
        print(title(results), flush=True)
        Console(width=140).print(side_by_side)
        for line in matched_reading(results):
            print(line, flush=True)
        t = results.get("timing") or {}
        names = " and ".join(m["strategy"] for m in matched_entries(results))
        extra = f", {names} {_fmt(t['matched_s'])}" if t.get("matched_s") is not None else ""
        print(f"time (s): load {_fmt(t.get('load_s'))}, eval {_fmt(t.get('eval_s'))}{extra}", flush=True)
        for note in results.get("notes") or []:
            say_once(note)
        if run_dir is not None:
            print(f"results: {run_dir / 'results.json'}", flush=True)
        return
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in (results.get("metrics") or {}).items():
        table.add_row(k, _fmt(v))
    sp = results.get("sparsity") or {}
    for key, label in (("target", "sparsity (target)"), ("achieved", "sparsity (achieved: the masks)"),
                       ("effective", "sparsity (effective: skipped, decode)"), ("effective_prefill", "sparsity (effective, prefill)"),
                       ("effective_model", "sparsity (effective over attention + FFN)")):
        if sp.get(key) is not None and (key != "target" or sp.get("achieved") is not None):
            table.add_row(label, _fmt(sp[key]))
    drift = results.get("drift") or {}
    if drift.get("enabled"):
        table.add_row("re-traces", str(len(drift.get("triggers") or [])))
    ov = results.get("overhead") or {}
    for k in ("state_bytes", "flops_ratio"):
        if ov.get(k) is not None:
            table.add_row(f"overhead/{k}", _fmt(ov[k]))
    t = results.get("timing") or {}
    table.add_row("time (s): load / eval", f"{_fmt(t.get('load_s'))} / {_fmt(t.get('eval_s'))}")
    print(title(results), flush=True)
    Console().print(table)
    for note in results.get("notes") or []:
        say_once(note)
    if run_dir is not None:
        print(f"results: {run_dir / 'results.json'}", flush=True)
