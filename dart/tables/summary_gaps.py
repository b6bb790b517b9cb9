"""Where a summarization gap comes from (docs/results.md "Summarization"): each run's ROUGE-L beside the run it differs
from by ONE thing, paired over the same documents (mean of the per-document differences, bootstrap 95% interval), and
the ratio of the two means (the paper's "up to 3x over the static mask" is such a ratio):

- the static mask's source: `static_prompt` (the prompt's mask) against `static` (the calibration mask);
- re-tracing, the calibration prior, GRIFFIN: every other pruned run against `static_prompt` without the prior;
- DART against the calibration mask: the gap the figure would show if its "static mask" were the calibration mask;
- the prompt truncation: a run with `eval.truncation=published` (the right cut that can drop the "Summary:" cue)
  against the same run with the default truncation.

Pairs share the model, data set and target sparsity (and the truncation, except in the truncation rows). Per-document
ROUGE-L comes from each run's summaries.jsonl (dart.evals.summarization)."""
from __future__ import annotations

import json
from pathlib import Path

from dart.stats import paired_diff_ci
from dart.tables.collect import Record
from dart.tables.labels import strategy_name
from dart.tables.render import Table
from dart.tables.sparsity import effective, pct, target

METRIC = "rougeL"
DEFAULT_TRUNCATION = "document"


def truncation(r: Record) -> str:
    return str((r.config.get("eval") or {}).get("truncation") or DEFAULT_TRUNCATION)


def prior(r: Record) -> float:
    return float((r.config.get("strategy") or {}).get("prior_mix") or 0.0)


def per_document(r: Record) -> dict[tuple[str, str], float]:
    """{(data set, document id): ROUGE-L} from the run's summaries.jsonl ({} when it has none, e.g. from W&B)."""
    path = Path(r.source) / "summaries.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(str(x["dataset"]), str(x["id"])): float(x[METRIC]) for x in rows if METRIC in x}


def comparisons(runs: list[Record]) -> list[tuple[Record, Record, str]]:
    """(run, its reference, what differs) for the runs of one model."""
    def find(strategy: str, tgt, trunc: str, with_prior: float = 0.0) -> Record | None:
        hits = [r for r in runs if r.strategy == strategy and target(r) == tgt and truncation(r) == trunc
                and prior(r) == with_prior]
        return hits[0] if hits else None

    out = []
    for r in runs:
        tgt, trunc = target(r), truncation(r)
        if trunc != DEFAULT_TRUNCATION:
            ref = find(r.strategy, tgt, DEFAULT_TRUNCATION, prior(r))
            if ref is not None:
                out.append((r, ref, f"eval.truncation={trunc} (the cue can be cut)"))
            continue
        if r.strategy in ("dense", "static"):
            continue
        if r.strategy == "static_prompt" and prior(r) == 0.0:
            ref = find("static", tgt, trunc)
            if ref is not None:
                out.append((r, ref, "the prompt's mask instead of the calibration mask"))
            continue
        ref = find("static_prompt", tgt, trunc)
        if ref is not None:
            out.append((r, ref, "re-tracing" if r.strategy.startswith("dart") and prior(r) == 0.0 else
                        "the calibration prior" if r.strategy == "static_prompt" else
                        "re-tracing and the calibration prior" if r.strategy.startswith("dart") else
                        "GRIFFIN's score for the prompt's mask" if r.strategy == "griffin" else
                        f"{strategy_name(r.strategy)} instead of the prompt's mask"))
        if r.strategy in ("dart", "dart_published"):
            ref = find("static", tgt, trunc)
            if ref is not None:
                out.append((r, ref, "re-tracing, over the calibration mask"))
    return out


def table(records: list[Record]) -> Table | None:
    runs = [r for r in records if r.complete]
    rows = []
    for model in dict.fromkeys(r.display_model for r in runs):
        mine = [r for r in runs if r.display_model == model]
        docs = {id(r): per_document(r) for r in mine}
        for r, ref, what in comparisons(mine):
            a_all, b_all = docs[id(r)], docs[id(ref)]
            for dataset in dict.fromkeys(d for d, _ in a_all):
                keys = sorted(k for k in a_all if k[0] == dataset and k in b_all)
                if not keys:
                    continue
                a, b = [a_all[k] for k in keys], [b_all[k] for k in keys]
                ma, mb = sum(a) / len(a), sum(b) / len(b)
                ci = paired_diff_ci(a, b)
                delta = f"{ma - mb:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
                rows.append([model, dataset, r.label, ref.label, what, pct(effective(r)), pct(effective(ref)),
                             ma, mb, f"{ma / mb:.2f}x" if mb > 0 else None, delta, str(len(keys))])
    if not rows:
        return None
    return Table(
        title=f"Summarization: where the gaps come from ({METRIC}, paired over documents)",
        columns=["Model", "Data set", "Method", "vs", "what differs", "effective %", "vs: effective %", METRIC,
                 f"vs: {METRIC}", "ratio", f"Δ {METRIC} [paired 95%]", "n"],
        rows=rows, fmt=lambda v: f"{v:.3f}", name=f"summarization_gaps_{METRIC}",
        notes=["Each row: a run against the run it differs from by one thing (what differs), on the same documents. "
               f"Δ: the mean of the per-document differences (this row − vs), bootstrap 95% interval (2000 "
               "resamples); an interval that excludes 0 is a difference at this n. ratio: the two means' quotient, "
               "the form of the paper's \"up to 3x\". Compare the effective sparsities too: a re-trace's dense tokens "
               "are not pruned."])
