"""Console output of a run: a short table of its metrics, sparsity and overhead."""
from __future__ import annotations

from pathlib import Path


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_run(results: dict, run_dir: Path | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    cfg = results.get("config", {})
    title = (f"{cfg.get('model', {}).get('name')} | strategy={cfg.get('strategy', {}).get('name')} | "
             f"sparsity={cfg.get('sparsity')} | eval={cfg.get('eval', {}).get('name')}")
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in (results.get("metrics") or {}).items():
        table.add_row(k, _fmt(v))
    sp = results.get("sparsity") or {}
    if sp.get("achieved") is not None:
        table.add_row("sparsity (achieved)", _fmt(sp.get("achieved")))
    ov = results.get("overhead") or {}
    for k in ("state_bytes", "flops_ratio"):
        if ov.get(k) is not None:
            table.add_row(f"overhead/{k}", _fmt(ov[k]))
    t = results.get("timing") or {}
    table.add_row("time (s): load / eval", f"{_fmt(t.get('load_s'))} / {_fmt(t.get('eval_s'))}")
    console = Console()
    console.print(table)
    for note in results.get("notes") or []:
        console.print(f"[yellow]note:[/yellow] {note}")
    if run_dir is not None:
        console.print(f"results: {run_dir / 'results.json'}")
