"""Console output of a run: a short table of its metrics, sparsity and overhead.

The title and the paths are printed as plain lines, never through rich's wrapping (rich wraps at 80 columns when
stdout is not a terminal, which would break a path in two)."""
from __future__ import annotations

from pathlib import Path

_SAID: set[str] = set()


def say_once(note: str) -> None:
    """Print a remark once per process: a sweep that runs its jobs in one process says it once, not once per job."""
    if note not in _SAID:
        _SAID.add(note)
        print(f"[dart] note: {note}", flush=True)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def title(results: dict) -> str:
    """"Llama-3.1-8B shape, random, 2 layers | strategy=dart | sparsity=0.7 | eval=smoke"; dense never shows a
    sparsity (it ignores it)."""
    from dart.tables.labels import model_label

    cfg = results.get("config", {})
    strategy = (cfg.get("strategy") or {}).get("name")
    parts = [model_label(cfg.get("model") or {}, results.get("model")), f"strategy={strategy}"]
    if strategy != "dense":
        parts.append(f"sparsity={cfg.get('sparsity')}")
    parts.append(f"eval={(cfg.get('eval') or {}).get('name')}")
    return " | ".join(parts)


def print_run(results: dict, run_dir: Path | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in (results.get("metrics") or {}).items():
        table.add_row(k, _fmt(v))
    sp = results.get("sparsity") or {}
    for key, label in (("target", "sparsity (target)"), ("achieved", "sparsity (achieved: the masks)"),
                       ("effective", "sparsity (effective: skipped, decode)"), ("effective_prefill", "sparsity (effective, prefill)")):
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
