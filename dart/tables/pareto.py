"""Matched compute (docs/method.md section 9): quality against EFFECTIVE sparsity, one curve per method (strategy plus
the knobs that vary), and a table comparing methods at the same effective sparsity.

Quality is whatever the sweep's evaluation reports: the ten benchmarks' average accuracy, switch's (and
fidelity's) KL and top-1 agreement on the switch segment, drift's agreement with dense, summarization's
ROUGE-L (mean over data sets), perplexity. A method's value at another method's effective sparsity is the
linear interpolation between its two nearest points; outside the range of its points it is "no data in range",
never extrapolated. Runs without `sparsity.effective` (older results) are left out, with a note.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from dart.models.names import model_name, model_sort_key
from dart.stats import INTERVAL_SUFFIXES
from dart.tables import sparsity
from dart.tables.collect import Record
from dart.tables.labels import base_label, strategy_name
from dart.tables.render import Table

OUT_OF_RANGE = "no data in range"


@dataclasses.dataclass(frozen=True)
class Quality:
    key: str  # metric key without "<eval>/", or a derived name
    label: str  # axis / table label
    higher_is_better: bool
    fmt: Callable[[float], str] = lambda v: f"{v:.4g}"
    scale: float = 1.0  # plotted as value * scale
    subset: str | None = None  # the samples it is read on (eval=switch: a pair kind), also those of its x


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


QUALITIES: dict[str, tuple[Quality, ...]] = {
    "ten": (Quality("average", "average accuracy (%)", True, _pct, 100.0),),
    "switch": (Quality("switch/kl", "KL(dense ‖ pruned) on B, switch pairs", False, subset="switch"),
               Quality("switch/top1", "top-1 agreement on B, switch pairs", True, lambda v: f"{v:.3f}",
                       subset="switch")),
    "fidelity": (Quality("switch/kl", "KL(dense ‖ pruned), switch segment", False),
                 Quality("switch/top1", "top-1 agreement, switch segment", True, lambda v: f"{v:.3f}")),
    "drift": (Quality("token_agreement", "token agreement with dense", True, lambda v: f"{v:.3f}"),
              Quality("rougeL_vs_dense", "ROUGE-L vs dense", True, lambda v: f"{v:.3f}")),
    "summarization": (Quality("rougeL", "ROUGE-L (mean over data sets)", True, lambda v: f"{v:.3f}"),),
}


@dataclasses.dataclass
class Point:
    series: str
    record: Record
    x: float  # effective sparsity
    y: float
    lo: float | None = None
    hi: float | None = None


def qualities(kind: str, eval_name: str, records: list[Record]) -> list[Quality]:
    if kind == "perplexity":
        keys = sorted({k.split("/", 1)[1] for r in records for k in r.metrics
                       if k.startswith(f"{eval_name}/") and not k.endswith(INTERVAL_SUFFIXES)})
        return [Quality(k, f"perplexity {k}", False) for k in keys]
    return list(QUALITIES.get(kind, ()))


def series_name(r: Record) -> str:
    """The curve a run belongs to: its strategy and the knobs of its label, without the sparsity."""
    return strategy_name(r.strategy) + r.label[len(base_label(r.strategy, r.sparsity)):]


def value(r: Record, q: Quality, averages: dict | None = None) -> tuple[float | None, float | None, float | None]:
    """(y, lo, hi) of one quality in one run; lo/hi the 95% interval where the run has one."""
    from dart.stats import normal_ci, reported_interval

    if not r.complete:
        return None, None, None
    if q.key == "average" and averages is not None:
        e = averages.get(r.source)
        if e is None or e.value is None:
            return None, None, None
        return (e.value, None, None) if e.se is None else (e.value, *normal_ci(e.value, e.se))
    if q.key == "rougeL" and q.label.startswith("ROUGE-L (mean"):
        vals = [v for k, v in r.metrics.items() if k.endswith("/rougeL") and isinstance(v, (int, float))]
        return (sum(vals) / len(vals), None, None) if vals else (None, None, None)
    key = f"{r.eval_name}/{q.key}"
    y = r.metrics.get(key)
    if not isinstance(y, (int, float)):
        return None, None, None
    iv = reported_interval(r.metrics, key)
    return (float(y), None, None) if iv is None else (float(y), iv.lo, iv.hi)


def points(records: list[Record], q: Quality, averages: dict | None = None) -> tuple[dict[str, dict[str, list[Point]]], list[Record]]:
    """{model: {series: [Point sorted by x]}} and the complete runs left out for want of an effective sparsity."""
    out: dict[str, dict[str, list[Point]]] = {}
    skipped = []
    for r in records:
        y, lo, hi = value(r, q, averages)
        if y is None:
            continue
        x = sparsity.effective(r, q.subset)
        if x is None:
            skipped.append(r)
            continue
        out.setdefault(r.model, {}).setdefault(series_name(r), []).append(Point(series_name(r), r, x, y, lo, hi))
    for by_series in out.values():
        for pts in by_series.values():
            pts.sort(key=lambda p: p.x)
    return out, skipped


def interpolate(pts: list[tuple[float, float]], x: float, tol: float = 1e-9) -> tuple[float | None, str]:
    """A curve's value at x: ("point" at one of its own x, "interpolated" linearly between the two nearest points
    around x, else (None, "out of range"): never extrapolated. pts: (x, y), any order."""
    pts = sorted(pts)
    for px, py in pts:
        if abs(px - x) <= tol:
            return py, "point"
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 < x < x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0), "interpolated"
    return None, "out of range"


def curves_exist(records: list[Record], kind: str, eval_name: str, averages: dict | None = None) -> bool:
    """Some method has runs at two effective sparsities (a curve to read other methods' points against)."""
    for q in qualities(kind, eval_name, records):
        for by_series in points(records, q, averages)[0].values():
            if any(len({round(p.x, 6) for p in pts}) > 1 for s, pts in by_series.items() if s != "Dense"):
                return True
    return False


def matched_table(records: list[Record], kind: str, eval_name: str, averages: dict | None = None) -> Table | None:
    """Rows: each effective sparsity at which some method has a point (per model and quality); columns: every
    method's quality there (its own point, or interpolated, or "no data in range"), Dense for reference."""
    rows, skipped = [], set()
    methods: list[str] = []
    for q in qualities(kind, eval_name, records):
        by_model, left_out = points(records, q, averages)
        skipped |= {r.source for r in left_out}
        for model in sorted(by_model, key=model_sort_key):
            curves = {s: pts for s, pts in by_model[model].items() if s != "Dense"}
            for s in curves:
                if s not in methods:
                    methods.append(s)
    if not methods or not curves_exist(records, kind, eval_name, averages):
        return None  # every method is one point (e.g. an ablation at one sparsity): nothing to interpolate
    for q in qualities(kind, eval_name, records):
        by_model, _ = points(records, q, averages)
        for model in sorted(by_model, key=model_sort_key):
            curves = {s: pts for s, pts in by_model[model].items() if s != "Dense"}
            dense = by_model[model].get("Dense")
            xs = sorted({round(p.x, 6) for pts in curves.values() for p in pts})
            for x in xs:
                owners = [s for s, pts in curves.items() if any(abs(p.x - x) <= 1e-6 for p in pts)]
                row = [model_name(model), q.label, f"{100 * x:.1f}", ", ".join(owners)]
                for s in methods:
                    if s not in curves:
                        row.append(None)
                        continue
                    y, how = interpolate([(p.x, p.y) for p in curves[s]], x, tol=1e-6)
                    own = [p for p in curves[s] if abs(p.x - x) <= 1e-6 and p.lo is not None]
                    iv = f" [{q.fmt(own[0].lo)}, {q.fmt(own[0].hi)}]" if how == "point" and own else ""
                    row.append(OUT_OF_RANGE if y is None else q.fmt(y) + iv + (" (interp.)" if how == "interpolated" else ""))
                row.append(q.fmt(dense[0].y) if dense else None)
                rows.append(row)
    if not rows:
        return None
    notes = ["Each row: an effective sparsity at which the named method(s) have a run, with its 95% interval; every "
             "other method's value there is linearly interpolated between its two nearest runs (interp.: no interval "
             "of its own), or \"no data in range\" outside its runs (never extrapolated). Dense: the dense run, for "
             "reference.",
             "Effective sparsity: the fraction of FFN neuron evaluations actually skipped over the scored tokens "
             "(dense traces and re-traces count as 0), from results.json sparsity.effective."]
    for subset in sorted({q.subset for q in qualities(kind, eval_name, records) if q.subset}):
        note = sparsity.by_subset_note(records, subset)
        notes += [note] if note else []
    notes += [n for n in sparsity.notes(records) if n == sparsity.PER_TOKEN_NOTE]
    if skipped:
        left = [r for r in records if r.source in skipped]
        notes.append("left out (results.json without sparsity.effective): "
                     + "; ".join(f"{r.display_model} / {r.label}" for r in left))
    return Table(title=f"Matched effective sparsity: eval={eval_name}",
                 columns=["Model", "quality", "effective %", "run of"] + methods + ["Dense"], rows=rows, notes=notes,
                 name=f"matched_{eval_name}")
