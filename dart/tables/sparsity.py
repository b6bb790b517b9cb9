"""Target and effective sparsity of a run, as every table shows them beside each row (docs/method.md section 9).

The engine writes results.json `sparsity.target` (the label), `sparsity.achieved` (the masks' mean sparsity) and
`sparsity.effective` (the token-weighted fraction of FFN neuron evaluations skipped over the decoded /
teacher-forced tokens: the dense trace and every re-trace count as 0). A row whose effective sparsity is more
than `TOLERANCE` below its target is marked with `MARK`, explained by `NOTE`. Runs written before the engine
measured it show "–". Dense runs prune nothing: their effective sparsity is 0 by definition.
"""
from __future__ import annotations

from typing import Iterable

from dart.tables.collect import Record
from dart.tables.render import MISSING

TOLERANCE = 0.02  # 2 points
MARK = "‡"
HEADERS = ["target %", "effective %"]
NOTE = (f"{MARK} effective sparsity more than {round(TOLERANCE * 100)} points below its target: dense re-trace "
        "tokens (the trace before the mask is built, every re-trace after a drift trigger) ran unpruned. Compare "
        "methods at matched effective sparsity (the matched-compute table), not at their label.")
MISSING_NOTE = ("effective % –: results.json without sparsity.effective (written before the engine measured it, or "
                "a failed run).")


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def target(r: Record) -> float | None:
    """The run's target sparsity: results.json sparsity.target, else the config's (dense: 0)."""
    t = _num((r.results.get("sparsity") or {}).get("target"))
    if t is not None:
        return t
    if r.strategy == "dense":
        return 0.0
    return r.sparsity


def effective(r: Record, subset: str | None = None) -> float | None:
    """The run's effective sparsity (None when not measured; a complete dense run: 0); with `subset` (a pair kind
    of eval=switch) the run's on that subset's samples where results.json records it (sparsity.effective_by_kind,
    since 2026-12), else the run's over all samples."""
    if not r.complete:
        return None
    sp = r.results.get("sparsity") or {}
    if subset is not None and _num((sp.get("effective_by_kind") or {}).get(subset)) is not None:
        return _num(sp["effective_by_kind"][subset])
    e = _num(sp.get("effective"))
    if e is None and r.strategy == "dense":
        return 0.0
    return e


def below_target(r: Record) -> bool:
    t, e = target(r), effective(r)
    return t is not None and e is not None and e < t - TOLERANCE - 1e-12


def pct(v: float | None) -> str:
    return MISSING if v is None else f"{100 * v:.1f}"


def cells(r: Record) -> list[str]:
    """[target %, effective %] as table cells; the effective one marked when below its target."""
    return [pct(target(r)), pct(effective(r)) + (MARK if below_target(r) else "")]


PER_TOKEN_NOTE = ("CATS, TEAL, WINA: per-token masks (every token its own), scored masked, every weight read (decoding "
                  "runs them on the sparse-input kernels, docs/performance.md); their effective sparsity is the "
                  "fraction of FFN weight reads such a kernel skips, the unit of every row (docs/method.md \"Per-token "
                  "methods\").")


def by_subset_note(records: Iterable[Record], subset: str) -> str | None:
    """A note for a table matched on one subset: which runs' effective sparsity is the run's over all samples."""
    old = [r for r in records if r.complete and r.strategy != "dense"
           and ((r.results.get("sparsity") or {}).get("effective_by_kind") or {}).get(subset) is None]
    if not old:
        return None
    return (f"Effective sparsity on the {subset} pairs themselves for runs that record it (results.json "
            f"sparsity.effective_by_kind); {len(old)} of these runs predate it and are placed at their effective "
            "sparsity over all pairs (a re-tracing method spends its dense tokens mostly on the two-topic pairs, so "
            "there it sits a little lower than shown: re-run the sweep to place it exactly).")


def notes(records: Iterable[Record]) -> list[str]:
    from dart.tables.labels import PER_TOKEN

    records = list(records)
    out = [PER_TOKEN_NOTE] if any(r.strategy in PER_TOKEN for r in records) else []
    if any(below_target(r) for r in records):
        out.append(NOTE)
    if any(r.complete and effective(r) is None for r in records):
        out.append(MISSING_NOTE)
    return out
