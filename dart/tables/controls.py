"""The re-trace controls (eval=switch): does the detector's TIMING matter, and does a fresh mask beat spending the same
dense tokens? Runs of a sweep that vary strategy.retrace_at (detector / periodic / random) or strategy.on_retrace
(remask / dense) are compared, per model, prompt length and target sparsity, with the detector's run (dart: detector
timing, remask): every row's effective sparsity, dense decode tokens and re-traces per sample, KL(dense ‖ pruned) on
the two-topic segment with its interval, and its difference to the detector's run PAIRED over the same samples
(mean of the per-sample differences, bootstrap 95% interval). A negative difference: lower KL than the detector."""
from __future__ import annotations

import json
from pathlib import Path

from dart.stats import paired_diff_ci
from dart.tables.collect import Record
from dart.tables.render import Table
from dart.tables.sparsity import by_subset_note, effective, pct, target

SUBSET = "switch"  # the two-topic pairs of the built-in pairs; a user's own pairs (eval.pairs): all of them


def subset(r: Record) -> str:
    """The samples the KL is read on: the built-in two-topic pairs, or every pair of a user's pairs file (whose kinds
    are the user's own labels)."""
    return SUBSET if f"{r.eval_name}/{SUBSET}/kl" in r.metrics or not r.metrics else "all"


def knobs(r: Record) -> tuple[str, str]:
    s = r.config.get("strategy") or {}
    return str(s.get("retrace_at", "detector")), str(s.get("on_retrace", "remask"))


def applies(records: list[Record]) -> bool:
    return any(r.complete and knobs(r) != ("detector", "remask") for r in records)


def samples(r: Record) -> dict[int, float] | None:
    """Per-sample KL of the two-topic pairs, by sample index: results.json `eval.samples`, else the run's
    switch_samples.jsonl beside it."""
    rows = ((r.results or {}).get("eval") or {}).get("samples")
    if rows is None:
        path = Path(r.source) / "switch_samples.jsonl"
        if not path.is_file():
            return None
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    which = subset(r)
    return {int(x["index"]): float(x["kl"]) for x in rows if which == "all" or x.get("kind") == which}


def _reference(group: list[Record]) -> Record | None:
    refs = [r for r in group if r.strategy == "dart" and knobs(r) == ("detector", "remask")]
    return refs[0] if refs else None


def _what(r: Record) -> str:
    timing, action = knobs(r)
    if r.strategy != "dart" and action == "remask" and timing == "detector":
        return "no re-trace"
    when = {"detector": "the detector", "periodic": "periodic", "random": "random"}[timing]
    return f"{when}, {'new mask' if action == 'remask' else 'dense tokens only, same mask'}"


def table(records: list[Record]) -> Table | None:
    if not applies(records):
        return None
    groups: dict[tuple, list[Record]] = {}
    for r in records:
        if r.complete:
            ev = r.config.get("eval") or {}
            groups.setdefault((r.display_model, ev.get("prefix"), target(r)), []).append(r)
    rows = []
    for (model, prefix, tgt), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0, kv[0][2] or 0)):
        ref = _reference(group)
        ref_kl = samples(ref) if ref is not None else None
        for r in sorted(group, key=lambda r: r.sort_key):
            m = r.metrics
            sp = (r.results or {}).get("sparsity") or {}
            n = m.get(f"{r.eval_name}/all/n")
            dense = (sp.get("dense_tokens") or {}).get("decode")
            kl, lo, hi = (m.get(f"{r.eval_name}/{subset(r)}/kl{k}") for k in ("", "_lo", "_hi"))
            delta = "–" if r is ref else None
            mine = samples(r)
            if r is not ref and ref_kl and mine:
                keys = sorted(set(ref_kl) & set(mine))
                if keys:
                    a, b = [mine[k] for k in keys], [ref_kl[k] for k in keys]
                    d = sum(x - y for x, y in zip(a, b)) / len(keys)
                    ci = paired_diff_ci(a, b)
                    delta = f"{d:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"
            rows.append([model, prefix, pct(tgt), r.label, _what(r), pct(effective(r, subset(r))),
                         None if dense is None or not n else dense / n, m.get(f"{r.eval_name}/{subset(r)}/retraces"),
                         None if kl is None else (f"{kl:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{kl:.3f}"),
                         m.get(f"{r.eval_name}/{subset(r)}/top1"), delta])
    return Table(
        title="Re-trace controls: eval=switch",
        columns=["Model", "prompt tokens", "target %", "Method", "re-trace", "effective %", "dense tokens / sample",
                 "re-traces / sample", f"KL on B ({SUBSET} pairs; a user's pairs: all)", "top-1",
                 "Δ KL vs the detector [paired 95%]"],
        rows=rows, fmt=lambda v: f"{v:.3g}", name="controls",
        notes=["re-trace: when a row re-traces (the drift detector, every N pruned forwards, or at random forwards at "
               "a given rate) and what it does then (new masks from the re-trace tokens, or the same mask after the "
               "same dense tokens: the dense fallback). Dense tokens / sample: decode tokens that ran dense (the "
               "trace before the first mask, every re-trace or dense hold).",
               "Δ KL: the mean over the same two-topic samples of (this row's KL − the detector's), with a paired "
               "bootstrap 95% interval (2000 resamples); below 0: better than the detector. An interval that excludes "
               "0 is a difference at this n; one that contains it is not.",
               by_subset_note([r for r in records if r.complete], SUBSET)
               or "Effective %: on the samples the KL is read on (results.json sparsity.effective_by_kind)."])
