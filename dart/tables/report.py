"""Collected runs -> every table that applies (Markdown + LaTeX) and every figure, written into one folder."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from dart.errors import ConfigError
from dart.tables import across, build, controls, decomposition, detector, pareto, plots, summary_gaps
from dart.tables import speed as speed_tables
from dart.tables.collect import Collection, dedupe
from dart.tables.labels import assign_labels
from dart.tables.render import Table, to_latex, to_markdown


@dataclasses.dataclass
class Report:
    tables: list[Table]
    figures: list[Path]
    notes: list[str]
    markdown: str
    files: list[Path]


def label(collection: Collection) -> list:
    """Labels are assigned per evaluation kind (the knobs that vary are those among comparable runs)."""
    records = collection.records
    by_eval: dict[str, list] = {}
    for r in records:
        by_eval.setdefault(r.eval_name, []).append(r)
    for group in by_eval.values():
        for r, (lab, key) in zip(group, assign_labels([r.config for r in group])):
            r.label, r.sort_key = lab, key
    return records


def make_report(collection: Collection, out: Path, metric: str = "acc", figures: bool = True,
                only: set[str] | None = None, speed: Path | None = None) -> Report:
    """only: the names of the tables (Table.name) and figures (file stems) to keep; None: all. speed: a bench of
    every method (dart.bench, bench_methods) to set eval=switch's quality beside (dart.tables.speed)."""
    records, notes = dedupe(label(collection))
    notes = list(collection.notes) + notes
    if not records:
        raise ConfigError("no runs found to make tables from")
    tables: list[Table] = []
    figs: list[Path] = []
    by_eval: dict[tuple[str, str], list] = {}
    for r in records:
        by_eval.setdefault((build.kind(r), r.eval_name), []).append(r)
    for (kind, eval_name), group in sorted(by_eval.items()):
        first = len(tables)
        suffix = "" if len([k for k in by_eval if k[0] == kind]) == 1 else f"_{eval_name}"
        averages = None
        if kind == "ten":
            t, averages = build.ten_table(group, metric)
            tables.append(t)
            gain = build.gain_table(group, metric)
            if gain is not None:
                tables.append(gain)
            if decomposition.applies(group):
                tables += decomposition.tables(group, build.ten_columns(build.ordered(group)), metric)
            if figures:
                figs.append(plots.accuracy_vs_sparsity(group, {k: e.value for k, e in averages.items()},
                                                       out / f"accuracy_vs_sparsity{suffix}.png", metric))
        elif kind == "summarization":
            t, bars = build.summarization_table(group)
            tables += [t, build.metrics_table(group, eval_name)]  # the paper's layout, then every ROUGE with its interval
            gaps = summary_gaps.table(group)  # each gap against the run it differs from by one thing, paired
            if gaps is not None:
                tables.append(gaps)
            if figures:
                figs.append(plots.rouge_bars(bars, out / f"rougeL_bars{suffix}.png"))
        else:
            tables.append(build.metrics_table(group, eval_name))
            if kind == "switch" and controls.applies(group):
                tables.append(controls.table(group))
            if kind == "switch" and across.applies(group):
                compared = across.table(group)
                tables += [compared] if compared is not None else []
            if kind == "switch" and speed is not None:
                bench = speed_tables.load_bench(speed)
                pts, speed_notes = speed_tables.points(build.ordered(group), bench)
                tables += [speed_tables.table(pts, speed_notes), speed_tables.pick_table(pts)]
                if figures:
                    figs.append(speed_tables.figure(pts, out / "speed_kl.png",
                                                    f"{bench['config']['model']}: fidelity at measured decode speed"))
            if kind == "detector":
                seen = detector.table(group)
                tables += [seen] if seen is not None else []
                if figures:
                    figs += detector.figures(group, out)
            if figures and kind == "drift":
                for r in build.ordered(group):
                    slug = "".join(ch if ch.isalnum() else "_" for ch in f"{r.model}_{r.label}").strip("_")
                    figs.append(plots.drift_traces(r, out / f"drift_cosine_{slug}.png"))
        matched = pareto.matched_table(group, kind, eval_name, averages)  # matched effective sparsity
        if matched is not None:
            tables.append(matched)
        if figures:  # quality vs effective sparsity, wherever two runs have both
            figs.append(plots.pareto(group, kind, eval_name, out / f"pareto_{eval_name}.png", averages))
        note = dtype_note(group)
        for t in tables[first:]:
            t.notes.append(note)
    figs = [f for f in figs if f is not None]
    if only is not None:
        known = {t.name for t in tables} | {f.stem for f in figs}
        if not only & known:
            raise ConfigError(f"--only {','.join(sorted(only))}: none of these tables or figures was made; made: "
                              f"{', '.join(sorted(known))}")
        tables = [t for t in tables if t.name in only]
        for f in figs:
            if f.stem not in only:
                f.unlink(missing_ok=True)
        figs = [f for f in figs if f.stem in only]
    md = render_markdown(tables, figs, notes, out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "tables.md", out / "tables.tex"]
    files[0].write_text(md)
    files[1].write_text("% generated by python -m dart.tables; needs \\usepackage{booktabs}\n\n"
                        + "\n".join(to_latex(t) for t in tables))
    return Report(tables=tables, figures=figs, notes=notes, markdown=md, files=files + figs)


def dtype_note(records: list) -> str:
    """"Computed in: SmolLM2-135M fp32" (every model of the runs, with the dtypes its runs computed in)."""
    from dart.models.names import short_dtype

    seen: dict[str, list[str]] = {}
    for r in records:
        d = short_dtype(r.dtype) if r.dtype else "dtype unknown (no results)"
        if d not in seen.setdefault(r.display_model, []):
            seen[r.display_model].append(d)
    return "Computed in: " + "; ".join(f"{m} {' and '.join(ds)}" for m, ds in seen.items()) + "."


def render_markdown(tables: list[Table], figures: list[Path], notes: list[str], out: Path) -> str:
    parts = [to_markdown(t) for t in tables]
    if notes:
        parts.append("### Notes\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    if figures:
        parts.append("### Figures\n\n" + "\n".join(f"![{f.stem}]({f.relative_to(out)})" for f in figures) + "\n")
    return "\n".join(parts)
