"""Tables from collected runs: the ten-benchmark table (with DART's gain over GRIFFIN beside the paper's), the
summarization ROUGE-L table (with the paper's figure values beside ours), and a metrics table for every other
evaluation (drift, perplexity, fidelity, ...). Rows are (model, label); a run with no numbers (failed, killed)
keeps its row with missing cells and a note saying why."""
from __future__ import annotations

from typing import Iterable

from dart.tables import published
from dart.tables.collect import Record
from dart.tables.labels import base_label, model_name, model_sort_key
from dart.tables.render import Table, percent, signed_points, three

HARNESS = "dart.evals.harness.Harness"
SUMMARIZATION = "dart.evals.summarization.Summarization"
DRIFT = "dart.evals.drift.Drift"
TEN_METRICS = ("acc", "acc_norm")


def kind(r: Record) -> str:
    target = (r.config.get("eval") or {}).get("_target_")
    return {HARNESS: "ten", SUMMARIZATION: "summarization", DRIFT: "drift"}.get(target, "other")


def ordered(records: Iterable[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (model_sort_key(r.model), r.sort_key, r.label))


def is_plain(r: Record) -> bool:
    """A row without extra knobs (e.g. "DART 70%", not "DART 70% (ranking=max)")."""
    return r.label == base_label(r.strategy, r.sparsity)


def problem_notes(records: Iterable[Record]) -> list[str]:
    return [p for p in (r.problem() for r in ordered(records)) if p]


# ----------------------------------------------------------------------------- the ten benchmarks
def benchmark_value(r: Record, bench, metric: str) -> tuple[float | None, str | None]:
    """(value, "real" | "offline") of one benchmark in one run: the mean of its lm-eval task(s), as the harness
    averages them (gpqa: its three n-shot tasks; mmlu: the macro average over subjects). None when not run."""
    if not r.complete:
        return None, None
    sources = (r.results.get("eval") or {}).get("sources") or {}
    src = sources.get(bench.name)
    prefix = r.eval_name
    if src:
        tasks, where = list(src["tasks"]), src["kind"]
    elif all(f"{prefix}/{t}/acc" in r.metrics for t in bench.lm_eval_tasks):  # runs without the sources section
        tasks, where = list(bench.lm_eval_tasks), "real"
    elif f"{prefix}/{bench.offline_twin}/acc" in r.metrics:
        tasks, where = [bench.offline_twin], "offline"
    else:
        return None, None
    vals = [r.metrics.get(f"{prefix}/{t}/{metric}") for t in tasks]
    if not vals or any(v is None for v in vals):
        return None, where
    return sum(vals) / len(vals), where


def ten_columns(records: list[Record]) -> list:
    from dart.evals.tasks import BENCHMARKS

    present = {b.name for r in records for b in BENCHMARKS if benchmark_value(r, b, "acc")[1] is not None}
    if not present:  # nothing ran: the columns the configs asked for
        for r in records:
            present |= set((r.config.get("eval") or {}).get("benchmarks") or [b.name for b in BENCHMARKS])
    return [b for b in BENCHMARKS if b.name in present]


def ten_table(records: list[Record], metric: str = "acc") -> tuple[Table, dict]:
    """The ten-benchmark table, and per row the average (for the accuracy-vs-sparsity plot)."""
    if metric not in TEN_METRICS:
        from dart.errors import choice_error

        raise choice_error("--metric", metric, TEN_METRICS)
    rows_in = ordered(records)
    benches = ten_columns(rows_in)
    kinds: dict[str, set] = {b.name: set() for b in benches}
    rows, averages = [], {}
    partial = False
    for r in rows_in:
        vals = []
        for b in benches:
            v, where = benchmark_value(r, b, metric)
            vals.append(v)
            if where:
                kinds[b.name].add(where)
        avg = sum(vals) / len(vals) if vals and all(v is not None for v in vals) else None
        partial |= avg is None and any(v is not None for v in vals)
        averages[r.source] = avg
        rows.append([r.display_model, r.label] + vals + [avg])
    all_offline = all(k == {"offline"} for k in kinds.values() if k)
    mixed = [b for b, k in kinds.items() if "offline" in k] if not all_offline else []
    cols = ["Model", "Method"] + [b.name + ("†" if b.name in mixed else "") for b in benches] + ["Avg"]
    title = f"Ten benchmarks: {metric} (%)"
    notes = []
    if all_offline and any(kinds.values()):
        title += ", offline stand-ins (NOT the benchmarks)"
        notes.append("Every column is an offline stand-in: lm-eval's prompt for that benchmark on real offline items "
                     "(dart/evals/tasks); few items, not comparable with published numbers.")
    if mixed:
        notes.append("† offline stand-in in at least one row (lm-eval's prompt on real offline items, not the benchmark).")
    if partial:
        notes.append(f"Avg: the mean over the {len(benches)} benchmark columns; – where any of them is missing.")
    limits = {(r.config.get("eval") or {}).get("limit") for r in rows_in}
    if limits - {None}:
        notes.append(f"eval.limit={', '.join(str(x) for x in sorted(limits - {None}))} documents per task: a subset.")
    if metric == "acc_norm":
        notes.append("acc_norm exists only for hellaswag, arc_easy, arc_challenge, openbookqa, gpqa, medmcqa: the "
                     "other columns are missing by design.")
    notes += problem_notes(rows_in)
    return Table(title=title, columns=cols, rows=rows, fmt=percent, notes=notes, name=f"ten_{metric}"), averages


def gain_table(records: list[Record], metric: str = "acc") -> Table | None:
    """DART's largest gain over GRIFFIN across the benchmarks, per model and sparsity, beside the paper's claim."""
    benches = ten_columns(records)
    plain = {(r.model, r.strategy, r.sparsity): r for r in records if r.complete and is_plain(r)}
    rows = []
    for (model, strategy, sparsity), d in sorted(plain.items(), key=lambda kv: (model_sort_key(kv[0][0]), kv[0][2] or 0)):
        g = plain.get((model, "griffin", sparsity)) if strategy == "dart" else None
        if g is None:
            continue
        best, where = None, None
        for b in benches:
            dv, gv = benchmark_value(d, b, metric)[0], benchmark_value(g, b, metric)[0]
            if dv is not None and gv is not None and (best is None or 100 * (dv - gv) > best):
                best, where = 100 * (dv - gv), b.name
        paper = published.TEN_MAX_GAIN_OVER_GRIFFIN.get((model, round(float(sparsity), 4)))
        rows.append([model_name(model), f"{round(float(sparsity) * 100):g}%", best, where, paper])
    if not rows:
        return None
    return Table(title=f"DART minus GRIFFIN: the largest gain over the benchmarks ({metric}, points)",
                 columns=["Model", "Sparsity", "Ours", "on", "Paper (arXiv 2601.22632)"], rows=rows,
                 fmt=signed_points, name="gain_over_griffin",
                 notes=["The paper states only its largest gain (+14.5 on Llama-3.1-8B at 70%), not on which benchmark."])


# ----------------------------------------------------------------------------- summarization
def summarization_datasets(records: list[Record]) -> list[str]:
    out: list[str] = []
    for r in records:
        for d in (r.config.get("eval") or {}).get("datasets") or []:
            if d not in out:
                out.append(d)
    return out


def summarization_table(records: list[Record], metric: str = "rougeL") -> tuple[Table, dict]:
    """Rows (model, data set), one column per method; the paper's figure values in their own columns where the
    model and data set match. Also returns {(model, dataset): {label: value}} for the bar plot."""
    rows_in = ordered(records)
    labels: list[str] = []
    for r in rows_in:
        if r.label not in labels:
            labels.append(r.label)
    models = sorted({r.model for r in rows_in}, key=model_sort_key)
    datasets = summarization_datasets(rows_in)
    with_paper = any(published.has_summarization(m) for m in models)
    paper_cols = [name for _, name in published.SUMMARIZATION_METHODS] if with_paper else []
    rows, bars = [], {}
    for m in models:
        mine = {r.label: r for r in rows_in if r.model == m}
        for d in datasets:
            vals = {lab: (mine[lab].metrics.get(f"{mine[lab].eval_name}/{d}/{metric}") if lab in mine and mine[lab].complete else None)
                    for lab in labels}
            paper = {name: published.summarization_rouge_l(m, d, s, sp) for (s, sp), name in published.SUMMARIZATION_METHODS}
            rows.append([model_name(m), d] + [vals[lab] for lab in labels] + [paper[c] for c in paper_cols])
            bars[(m, d)] = {"ours": vals, "paper": {c: paper[c] for c in paper_cols if paper[c] is not None}}
    cols = ["Model", "Data set"] + labels + [f"Paper: {c}" for c in paper_cols]
    notes = []
    if with_paper:
        notes.append(f"Paper columns: {published.PAPER}, Llama-3.2-3B-Instruct at 50%, ROUGE-L (static mask = the "
                     "prompt mask never re-traced = static_prompt); – where the paper gives no number.")
    if "wiki" in datasets:
        notes.append("wiki: the offline stand-in (real Wikipedia article body -> its lead section), not a paper data set.")
    limits = {(r.config.get("eval") or {}).get("limit") for r in rows_in}
    notes.append(f"Samples per data set: {', '.join(str(x) for x in sorted(limits, key=str))} (the paper: 100).")
    for r in rows_in:
        notes += [f"{r.display_model} / {r.label}: {n}" for n in (r.results.get("notes") or [])]
    notes += problem_notes(rows_in)
    return Table(title=f"Summarization: {metric}", columns=cols, rows=rows, fmt=three, notes=notes,
                 name=f"summarization_{metric}"), bars


# ----------------------------------------------------------------------------- any other evaluation
def metrics_table(records: list[Record], eval_name: str) -> Table:
    rows_in = ordered(records)
    prefix = f"{eval_name}/"
    keys: list[str] = []
    for r in rows_in:
        for k in r.metrics:
            if k.startswith(prefix) and k[len(prefix):] not in keys:
                keys.append(k[len(prefix):])
    achieved = any(isinstance((r.results.get("sparsity") or {}).get("achieved"), (int, float)) for r in rows_in)
    rows = []
    for r in rows_in:
        row = [r.display_model, r.label] + [r.metrics.get(prefix + k) for k in keys]
        if achieved:
            row.append((r.results.get("sparsity") or {}).get("achieved") if r.complete else None)
        rows.append(row)
    cols = ["Model", "Method"] + keys + (["sparsity achieved"] if achieved else [])
    return Table(title=f"eval={eval_name}", columns=cols, rows=rows, notes=problem_notes(rows_in), name=f"metrics_{eval_name}")
