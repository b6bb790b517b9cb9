"""The same methods on several models at matched effective sparsity (eval=switch): one column per model and
operating point, one row per method, so that "does re-tracing beat the prompt's static mask at matched cost?" can be
read across model sizes in one table.

A run belongs to a method when its strategy knobs are that strategy's defaults (conf/strategy/<name>.yaml), plus the
method's own knobs (the calibration prior: prior_mix 0.3); knobs a run predates count as their defaults. Per model the
operating points: exactly 50% effective sparsity, and the effective sparsity of each DART run labelled 50% (DART, and
DART with the published margin where it ran), where that run has its own point and interval. A method's value there is its own run's (with its 95% interval) when one lies
within half a point, else linearly interpolated between its two nearest runs ("interp."), never extrapolated.
"""
from __future__ import annotations

from dart.models.names import model_name, model_sort_key
from dart.tables import pareto
from dart.tables.collect import Record
from dart.tables.labels import flatten, is_default, strategy_defaults
from dart.tables.render import Table

METHODS = (("CATS", "cats", ()), ("TEAL", "teal", ()), ("WINA", "wina", ()),
           ("Static (prompt)", "static_prompt", ()), ("GRIFFIN", "griffin", ()), ("DART", "dart", ()),
           ("DART, published margin 0.1", "dart", (("drift.min_margin", 0.1),)),
           ("Static (prompt) + prior", "static_prompt", (("prior_mix", 0.3),)), ("DART+prior", "dart_plus", ()),
           ("DART (published)", "dart_published", ()))
QUALITY = pareto.QUALITIES["switch"][0]  # KL(dense || pruned) on B, two-topic pairs
NEAR = 0.005  # a run within half a point is the method's own point
ANCHORS = ("DART", "DART, published margin 0.1")  # the 50%-label runs whose effective sparsities are operating points


def method_of(r: Record) -> str | None:
    """The METHODS name of a run, or None when its knobs are not one method's (calibration knobs aside)."""
    mine = flatten((r.config.get("strategy") or {}), "strategy.")
    for name, strategy, extra in METHODS:
        if r.strategy != strategy:
            continue
        want = strategy_defaults(strategy, extra)
        if all(is_default(k, mine.get(k), want) for k in want if not k.startswith("strategy.calibration.")):
            return name
    return None


def applies(records: list[Record]) -> bool:
    return len({r.model for r in records if r.complete and method_of(r)}) >= 2


def _cell(points: list[pareto.Point], x: float) -> str:
    for p in points:
        if abs(p.x - x) <= NEAR:
            iv = f" [{QUALITY.fmt(p.lo)}, {QUALITY.fmt(p.hi)}]" if p.lo is not None else ""
            return QUALITY.fmt(p.y) + iv + (f" at {100 * p.x:.1f}" if abs(p.x - x) > 5e-4 else "")
    y, how = pareto.interpolate([(p.x, p.y) for p in points], x)
    return pareto.OUT_OF_RANGE if y is None else f"{QUALITY.fmt(y)} (interp.)"


def table(records: list[Record]) -> Table | None:
    chosen = [r for r in records if r.complete and method_of(r)]
    by_model: dict[str, dict[str, list[pareto.Point]]] = {}
    for r in chosen:
        y, lo, hi = pareto.value(r, QUALITY)
        x = pareto.sparsity.effective(r, QUALITY.subset)
        if y is None or x is None:
            continue
        by_model.setdefault(r.model, {}).setdefault(method_of(r), []).append(pareto.Point(method_of(r), r, x, y, lo, hi))
    models = sorted(by_model, key=model_sort_key)
    if len(models) < 2:
        return None
    columns, points = ["Method"], {}
    for m in models:
        points[m] = [(0.5, "at 50.0%")]
        for name in ANCHORS:
            for p in by_model[m].get(name, []):
                if p.record.sparsity == 0.5 and all(abs(p.x - x) > NEAR for x, _ in points[m]):
                    points[m].append((p.x, f"at {100 * p.x:.1f}% ({name} 50%)"))
        columns += [f"{model_name(m)}: {what}" for _, what in points[m]]
    rows = []
    for name, _, _ in METHODS:
        if not any(name in by_model[m] for m in models):
            continue
        row = [name]
        for m in models:
            pts = sorted(by_model[m].get(name, []), key=lambda p: p.x)
            row += [_cell(pts, x) if pts else None for x, _ in points[m]]
        rows.append(row)
    n_row, dense_row, rate_row = ["n two-topic pairs"], ["dense perplexity on B"], ["DART 50%: re-traces per pair"]
    for m in models:
        runs = [p.record for pts in by_model[m].values() for p in pts]
        n = {int(r.metrics.get("switch/switch/n") or 0) for r in runs}
        ppl = [r.metrics.get("switch/switch/ppl_dense") for r in runs if r.metrics.get("switch/switch/ppl_dense")]
        dart50 = [p.record for p in by_model[m].get("DART", []) if p.record.sparsity == 0.5]
        rate = dart50[0].metrics.get("switch/switch/retraces") if dart50 else None
        k = len(points[m])
        n_row += [", ".join(str(v) for v in sorted(n))] * k
        dense_row += [f"{ppl[0]:.2f}" if ppl else None] * k
        rate_row += [f"{rate:.2f}" if isinstance(rate, (int, float)) else None] * k
    rows += [n_row, dense_row, rate_row]
    notes = [f"{QUALITY.label}; lower is better. Own run: its value and 95% bootstrap interval over pairs (\"at X\": "
             "its own effective sparsity, within half a point); interp.: linear between the method's two nearest "
             "runs (no interval of its own); never extrapolated.",
             "A method: the strategy's default knobs (conf/strategy), + prior: prior_mix 0.3 (a calibration "
             "ranking blended into each request's scores). The pairs are built by one rule for every model, but which "
             "documents qualify depends on each tokenizer's token counts: the pairs are not the same documents.",
             pareto.sparsity.by_subset_note(chosen, "switch")
             or "Effective sparsity on the two-topic pairs themselves (results.json sparsity.effective_by_kind)."]
    notes += [n for n in pareto.sparsity.notes(chosen) if n == pareto.sparsity.PER_TOKEN_NOTE]
    if "qwen25_coder_1p5b" in models:
        notes.append("Qwen2.5-Coder-1.5B-Instruct is a code-instruct model (trained mostly on code), here on English "
                     "news and Wikipedia text.")
    return Table(title="Across models at matched effective sparsity: KL on the two-topic pairs (eval=switch)",
                 columns=columns, rows=rows, notes=notes, name="across_models")
