"""Tables from collected runs: the ten-benchmark table (with DART's gain over GRIFFIN beside the paper's), the
summarization ROUGE-L table (with the paper's figure values beside ours), and a metrics table for every other
evaluation (drift, perplexity, fidelity, ...). Rows are (model, label); a run with no numbers (failed, killed)
keeps its row with missing cells and a note saying why."""
from __future__ import annotations

from typing import Iterable

from dart.models.names import model_name, model_sort_key
from dart.stats import INTERVAL_SUFFIXES, reported_interval
from dart.tables import accuracy, published, sparsity
from dart.tables.collect import Record
from dart.tables.labels import base_label
from dart.tables.render import MISSING, Table, percent, signed_points, three

# The kind of evaluation a run is, by its config's `eval.name` (conf/eval/<name>.yaml; every results.json config has
# it): which tables and qualities apply. Never by `eval._target_`: renaming a class must not turn its runs into
# "other". An eval config of another name (a user's own) is "other": its metrics get the generic table.
EVAL_KINDS = {"ten": "ten", "summarization": "summarization", "drift": "drift", "drift_demo": "drift",
              "switch": "switch", "overview": "switch", "fidelity": "fidelity", "perplexity": "perplexity",
              "smoke": "perplexity", "detector": "detector"}
TEN_METRICS = ("acc", "acc_norm")


def kind(r: Record) -> str:
    """"ten", "switch", "fidelity", "drift", "summarization", "perplexity" or "other" (see EVAL_KINDS)."""
    return EVAL_KINDS.get(r.eval_name, "other")


def ordered(records: Iterable[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (model_sort_key(r.model), r.sort_key, r.label))


def is_plain(r: Record) -> bool:
    """A row without extra knobs (e.g. "DART 70%", not "DART 70% (ranking=max)")."""
    return r.label == base_label(r.strategy, r.sparsity)


def problem_notes(records: Iterable[Record]) -> list[str]:
    return [p for p in (r.problem() for r in ordered(records)) if p]


# ----------------------------------------------------------------------------- the ten benchmarks
def benchmark_tasks(r: Record, bench) -> tuple[list[str], str | None]:
    """The lm-eval task(s) one benchmark ran as in one run, and "real" | "offline" ([] and None when not run)."""
    if not r.complete:
        return [], None
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
        return [], None
    return tasks, where


def benchmark_estimate(r: Record, bench, metric: str) -> accuracy.Estimate:
    """One benchmark in one run with its se and n: the mean of its lm-eval task(s), as the harness averages them
    (gpqa: its three n-shot tasks; mmlu: the macro average over subjects). value None when not run."""
    tasks, where = benchmark_tasks(r, bench)
    if not tasks:
        return accuracy.Estimate(None, where=where)
    return accuracy.benchmark_estimate(r, tasks, metric, where)


def benchmark_value(r: Record, bench, metric: str) -> tuple[float | None, str | None]:
    """(value, "real" | "offline") of one benchmark in one run (None, None when not run)."""
    e = benchmark_estimate(r, bench, metric)
    return e.value, e.where


def n_header(name: str, estimates: list[accuracy.Estimate]) -> tuple[str, bool]:
    """A column's header with its n when every row scored the same number of documents (then the cells need not
    repeat it): ("boolq (n=12)", False), else (name, True)."""
    ns = {e.n for e in estimates if e.value is not None}
    if len(ns) == 1 and None not in ns:
        return f"{name} (n={ns.pop()})", False
    return name, True


def ten_columns(records: list[Record]) -> list:
    from dart.evals.tasks import BENCHMARKS

    present = {b.name for r in records for b in BENCHMARKS if benchmark_value(r, b, "acc")[1] is not None}
    if not present:  # nothing ran: the columns the configs asked for
        for r in records:
            present |= set((r.config.get("eval") or {}).get("benchmarks") or [b.name for b in BENCHMARKS])
    return [b for b in BENCHMARKS if b.name in present]


def ten_table(records: list[Record], metric: str = "acc") -> tuple[Table, dict]:
    """The ten-benchmark table, and per row (source) the average as an accuracy.Estimate (for the figures)."""
    if metric not in TEN_METRICS:
        from dart.errors import choice_error

        raise choice_error("--metric", metric, TEN_METRICS)
    rows_in = ordered(records)
    benches = ten_columns(rows_in)
    kinds: dict[str, set] = {b.name: set() for b in benches}
    table, averages = [], {}
    partial = False
    for r in rows_in:
        ests = [benchmark_estimate(r, b, metric) for b in benches]
        for b, e in zip(benches, ests):
            if e.where:
                kinds[b.name].add(e.where)
        avg = accuracy.mean_of(ests) if ests else accuracy.Estimate(None)
        partial |= avg.value is None and any(e.value is not None for e in ests)
        averages[r.source] = avg
        table.append((r, ests, avg))
    headers = [n_header(b.name, [row[1][i] for row in table]) for i, b in enumerate(benches)]
    avg_header = n_header("Avg", [row[2] for row in table])
    rows = [[r.display_model, r.label] + sparsity.cells(r)
            + [accuracy.fmt(e, with_n=headers[i][1]) for i, e in enumerate(ests)]
            + [accuracy.fmt(avg, with_n=avg_header[1])] for r, ests, avg in table]
    all_offline = all(k == {"offline"} for k in kinds.values() if k)
    mixed = [b for b, k in kinds.items() if "offline" in k] if not all_offline else []
    cols = (["Model", "Method"] + sparsity.HEADERS
            + [h + ("†" if b.name in mixed else "") for (h, _), b in zip(headers, benches)] + [avg_header[0]])
    title = f"Ten benchmarks: {metric} (%)"
    notes = []
    if all_offline and any(kinds.values()):
        title += ", offline stand-ins (NOT the benchmarks)"
        notes.append("Every column is an offline stand-in: lm-eval's prompt for that benchmark on real offline items "
                     "(dart/evals/tasks); few items, not comparable with published numbers.")
    if mixed:
        notes.append("† offline stand-in in at least one row (lm-eval's prompt on real offline items, not the benchmark).")
    notes.append(accuracy.CI_NOTE + " Avg: the mean over the benchmark columns, its ± from theirs (independent).")
    if partial:
        notes.append(f"Avg: the mean over the {len(benches)} benchmark columns; – where any of them is missing.")
    limits = {(r.config.get("eval") or {}).get("limit") for r in rows_in}
    if limits - {None}:
        notes.append(f"eval.limit={', '.join(str(x) for x in sorted(limits - {None}))} documents per task: a subset.")
    if metric == "acc_norm":
        notes.append("acc_norm exists only for hellaswag, arc_easy, arc_challenge, openbookqa, gpqa, medmcqa: the "
                     "other columns are missing by design.")
    notes += sparsity.notes(rows_in) + problem_notes(rows_in)
    return Table(title=title, columns=cols, rows=rows, fmt=percent, notes=notes, name=f"ten_{metric}"), averages


def gain_table(records: list[Record], metric: str = "acc") -> Table | None:
    """DART's largest gain over GRIFFIN across the benchmarks, per model and sparsity, beside the paper's claim."""
    benches = ten_columns(records)
    plain = {(r.model, r.strategy, r.sparsity): r for r in records if r.complete and is_plain(r)}
    rows, used = [], []
    for (model, strategy, target), d in sorted(plain.items(), key=lambda kv: (model_sort_key(kv[0][0]), kv[0][2] or 0)):
        g = plain.get((model, "griffin", target)) if strategy == "dart" else None
        if g is None:
            continue
        best, where = None, None
        for b in benches:
            dv, gv = benchmark_value(d, b, metric)[0], benchmark_value(g, b, metric)[0]
            if dv is not None and gv is not None and (best is None or 100 * (dv - gv) > best):
                best, where = 100 * (dv - gv), b.name
        paper = published.TEN_MAX_GAIN_OVER_GRIFFIN.get((model, round(float(target), 4)))
        rows.append([model_name(model), f"{round(float(target) * 100):g}%", sparsity.cells(d)[1],
                     sparsity.cells(g)[1], best, where, paper])
        used += [d, g]
    if not rows:
        return None
    return Table(title=f"DART minus GRIFFIN: the largest gain over the benchmarks ({metric}, points)",
                 columns=["Model", "Sparsity", "DART effective %", "GRIFFIN effective %", "Ours", "on",
                          "Paper (arXiv 2601.22632)"], rows=rows, fmt=signed_points, name="gain_over_griffin",
                 notes=["The paper states only its largest gain (+14.5 on Llama-3.1-8B at 70%), not on which benchmark.",
                        "Sparsity: the target of both rows; effective: measured per run."] + sparsity.notes(used))


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
            ci = {lab: reported_interval(mine[lab].metrics, f"{mine[lab].eval_name}/{d}/{metric}")
                  for lab in labels if vals[lab] is not None}
            bars[(m, d)] = {"ours": vals, "ci": {k: v for k, v in ci.items() if v is not None},
                            "paper": {c: paper[c] for c in paper_cols if paper[c] is not None}}
        for i, what in enumerate(sparsity.HEADERS):  # target and effective sparsity of each method's run
            rows.append([model_name(m), f"sparsity: {what}"]
                        + [sparsity.cells(mine[lab])[i] if lab in mine else MISSING for lab in labels]
                        + [None for _ in paper_cols])
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
    notes += sparsity.notes(rows_in) + problem_notes(rows_in)
    return Table(title=f"Summarization: {metric}", columns=cols, rows=rows, fmt=three, notes=notes,
                 name=f"summarization_{metric}"), bars


# ----------------------------------------------------------------------------- any other evaluation
def metric_keys(records: list[Record], eval_name: str) -> list[str]:
    """The metric names (without "<eval>/") the runs report, in first-seen order; interval bounds (`_lo`, `_hi`)
    and standard errors (`_stderr`) of a reported metric are folded into its cell, not columns of their own."""
    prefix = f"{eval_name}/"
    keys: list[str] = []
    for r in records:
        for k in r.metrics:
            if k.startswith(prefix) and k[len(prefix):] not in keys:
                keys.append(k[len(prefix):])
    return [k for k in keys if not any(k.endswith(sfx) and k[: -len(sfx)] in keys for sfx in INTERVAL_SUFFIXES)]


def metric_cell(r: Record, key: str, fmt=lambda v: f"{v:.4g}"):
    """A metric with its interval where the run reports one: "0.0335 [0.0246, 0.0416]" (bounds) or
    "0.41 ± 0.05" (1.96 × stderr); the bare number otherwise (None when missing)."""
    v = r.metrics.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return v
    iv = reported_interval(r.metrics, key)
    if iv is None:
        return v
    return f"{fmt(v)} [{fmt(iv.lo)}, {fmt(iv.hi)}]" if iv.half is None else f"{fmt(v)} ± {fmt(iv.half)}"


def metrics_table(records: list[Record], eval_name: str) -> Table:
    """One row per run (and per subset where the metrics are `<subset>/<metric>` for several subsets, as
    fidelity's same/switch and switch's switch/control/all), target and effective sparsity beside each."""
    rows_in = ordered(records)
    prefix = f"{eval_name}/"
    keys = metric_keys(rows_in, eval_name)
    achieved = any(isinstance((r.results.get("sparsity") or {}).get("achieved"), (int, float)) for r in rows_in)
    subsets: list[str] = []
    for k in keys:
        if "/" in k and k.split("/", 1)[0] not in subsets:
            subsets.append(k.split("/", 1)[0])
    grouped = len(subsets) > 1 and all("/" in k for k in keys)
    names = list(dict.fromkeys(k.split("/", 1)[1] for k in keys)) if grouped else keys
    rows = []
    for r in rows_in:
        lead = [r.display_model, r.label] + sparsity.cells(r)
        if achieved:
            lead.append(sparsity.pct((r.results.get("sparsity") or {}).get("achieved") if r.complete else None))
        for sub in subsets if grouped else [None]:
            keyed = [f"{prefix}{sub}/{n}" if grouped else prefix + n for n in names]
            rows.append(lead + ([sub] if grouped else []) + [metric_cell(r, k) for k in keyed])
    cols = (["Model", "Method"] + sparsity.HEADERS + (["achieved %"] if achieved else []) + (["subset"] if grouped else [])
            + names)
    notes = []
    if any(isinstance(r.metrics.get(k), (int, float)) and isinstance(r.metrics.get(k + "_lo"), (int, float))
           for r in rows_in for k in r.metrics):
        boot = next(((r.results.get("eval") or {}).get("bootstrap") for r in rows_in
                     if (r.results.get("eval") or {}).get("bootstrap")), None) or {}
        notes.append("[lo, hi]: 95% interval" + (f", {boot['method']} bootstrap over {boot.get('unit', 'sample')}s "
                                                 f"({boot.get('resamples')} resamples, seed {boot.get('seed')})"
                                                 if boot.get("method") else "") + "; n: samples.")
    if achieved:
        notes.append("achieved %: the masks' mean sparsity; effective %: the fraction of FFN neuron evaluations "
                     "skipped over the scored tokens (dense traces and re-traces count as 0).")
    notes += sparsity.notes(rows_in) + problem_notes(rows_in)
    return Table(title=f"eval={eval_name}", columns=cols, rows=rows, notes=notes, name=f"metrics_{eval_name}")
