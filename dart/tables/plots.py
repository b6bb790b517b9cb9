"""Figures from collected runs (matplotlib, Agg): accuracy vs sparsity per strategy, quality vs EFFECTIVE sparsity
(the Pareto plot of matched compute), ROUGE-L bars beside the paper's, and the drift detector's window cosine over
a generation (from results.json `drift.windows`)."""
from __future__ import annotations

from pathlib import Path

from dart.evals.plots import draw_drift_trace
from dart.models.names import model_name, model_sort_key
from dart.tables.collect import Record, drift_key, drift_windows
from dart.tables.labels import base_label, strategy_name


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path


def accuracy_vs_sparsity(records: list[Record], averages: dict[str, float | None], path: Path,
                         metric: str = "acc") -> Path | None:
    """One panel per model: the ten-benchmark average against sparsity, one line per strategy (plus its knobs),
    dense as a dashed horizontal line. None when no series has two sparsities."""
    points: dict[str, dict[str, list[tuple[float, float]]]] = {}
    dense: dict[str, float] = {}
    for r in records:
        avg = averages.get(r.source)
        if avg is None:
            continue
        if r.strategy == "dense":
            dense[r.model] = avg
            continue
        series = strategy_name(r.strategy) + r.label[len(base_label(r.strategy, r.sparsity)):]
        points.setdefault(r.model, {}).setdefault(series, []).append((100 * float(r.sparsity or 0), 100 * avg))
    if not any(len({x for x, _ in pts}) > 1 for series in points.values() for pts in series.values()):
        return None  # every series is one point (e.g. an ablation at one sparsity): no curve to draw
    plt = _plt()
    models = sorted(set(points) | set(dense), key=model_sort_key)
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.4), squeeze=False)
    for ax, m in zip(axes[0], models):
        for i, (series, pts) in enumerate(sorted(points.get(m, {}).items())):
            pts = sorted(pts)  # distinct markers and dashes: equal series stay visible on top of each other
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="os^Dv<>p"[i % 8], ls=("-", "--", ":", "-.")[i % 4],
                    ms=7 - i % 3, label=series)
        if m in dense:
            ax.axhline(100 * dense[m], color="black", ls="--", lw=1, label="Dense")
        ax.set_title(model_name(m), fontsize=10)
        ax.set_xlabel("FFN sparsity (%)")
        ax.set_ylabel(f"average {metric} (%)")
        ax.legend(fontsize=7)
    return _save(fig, path)


def rouge_bars(bars: dict, path: Path, metric: str = "rougeL") -> Path | None:
    """Horizontal bars, one row per method (ours, then the paper's hatched where it has a number) and one bar per
    data set in it, with each run's 95% interval; one panel per model. Rows read top to bottom in the tables' order."""
    models = sorted({m for m, _ in bars}, key=model_sort_key)
    if not any(v is not None for cell in bars.values() for v in cell["ours"].values()):
        return None
    plt = _plt()
    rows_per = {m: len(next(bars[(mm, d)] for mm, d in bars if mm == m)["ours"]) + 3 for m in models}
    fig, axes = plt.subplots(len(models), 1, squeeze=False,
                             figsize=(9, sum(0.32 * n + 0.8 for n in rows_per.values())),
                             gridspec_kw={"height_ratios": [rows_per[m] for m in models]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, m in zip(axes[:, 0], models):
        datasets = [d for mm, d in bars if mm == m]
        cells = [bars[(m, d)] for d in datasets]
        rows = [(lab, False) for lab in cells[0]["ours"]]
        rows += [(c, True) for c in dict.fromkeys(c for cell in cells for c in cell["paper"])]
        height = 0.8 / max(len(datasets), 1)
        for k, (d, cell) in enumerate(zip(datasets, cells)):
            for i, (name, paper) in enumerate(rows):
                v = (cell["paper"] if paper else cell["ours"]).get(name)
                y = i + (k - (len(datasets) - 1) / 2) * height
                if v is None:  # missing: a dash, not a zero-length bar that reads as 0
                    ax.text(0, y, "–", va="center", fontsize=8)
                    continue
                iv = None if paper else cell.get("ci", {}).get(name)
                err = [[v - iv.lo], [iv.hi - v]] if iv is not None else None
                ax.barh(y, v, height, xerr=err, color=colors[k % len(colors)], hatch="//" if paper else None,
                        alpha=0.55 if paper else 1.0, error_kw={"elinewidth": 0.8, "capsize": 2},
                        label=d if i == 0 else None)
        ax.set_yticks(range(len(rows)), [f"paper: {n}" if paper else n for n, paper in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{metric} (bars: 95% interval)")
        ax.set_title(model_name(m), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8, title="data set", title_fontsize=8, loc="lower right")
    return _save(fig, path)


def drift_traces(record: Record, path: Path, max_panels: int = 12) -> Path | None:
    """The window cosine against the threshold over decode steps, one panel per sample (a request's row: a batch
    generated together is one request), its own triggers marked."""
    by_sample = drift_windows(record)
    if not by_sample:
        return None
    triggers: dict[tuple[int, int], list[dict]] = {}
    for t in ((record.results.get("drift") or {}).get("triggers") or []):
        triggers.setdefault(drift_key(t), []).append(t)
    samples = sorted(by_sample)[:max_panels]
    batched = len({row for _, row in by_sample}) > 1
    plt = _plt()
    fig, axes = plt.subplots(len(samples), 1, figsize=(8, 2.4 * len(samples)), squeeze=False)
    for ax, key in zip(axes[:, 0], samples):
        ws = sorted(by_sample[key], key=lambda w: w["step"])
        draw_drift_trace(ax, ws, [t["step"] for t in triggers.get(key, [])])
        which = f"request {key[0]}, row {key[1]}" if batched else f"request {key[0]}"
        ax.set_title(f"{model_name(record.model)} / {record.label}: {which}", fontsize=9)
        ax.set_ylabel("cosine")
        ax.legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("forward (decode step)")
    return _save(fig, path)


def pareto(records: list[Record], kind: str, eval_name: str, path: Path, averages: dict | None = None) -> Path | None:
    """Quality against EFFECTIVE sparsity (dart.tables.pareto): one panel per model and quality, one curve per
    method (strategy + knobs), 95% error bars where the runs have intervals, dense as a point at 0 and a dashed
    line. None when fewer than two runs have both a quality and an effective sparsity."""
    from dart.tables import pareto as par

    qs = par.qualities(kind, eval_name, records)
    data = [(q, par.points(records, q, averages)[0]) for q in qs]
    data = [(q, by_model) for q, by_model in data
            if sum(len(pts) for by_series in by_model.values() for pts in by_series.values()) > 1]
    if not data:
        return None  # fewer than two runs with a quality and an effective sparsity: nothing to compare
    models = sorted({m for _, by_model in data for m in by_model}, key=model_sort_key)
    plt = _plt()
    fig, axes = plt.subplots(len(models), len(data), figsize=(4.6 * len(data), 3.6 * len(models)), squeeze=False)
    for i, m in enumerate(models):
        for j, (q, by_model) in enumerate(data):
            ax = axes[i, j]
            for k, (series, pts) in enumerate(sorted(by_model.get(m, {}).items())):
                xs, ys = [100 * p.x for p in pts], [q.scale * p.y for p in pts]
                err = None
                if any(p.lo is not None for p in pts):
                    err = [[q.scale * (p.y - p.lo) if p.lo is not None else 0.0 for p in pts],
                           [q.scale * (p.hi - p.y) if p.hi is not None else 0.0 for p in pts]]
                if series == "Dense":
                    ax.axhline(ys[0], color="black", ls="--", lw=1)
                    ax.errorbar(xs, ys, yerr=err, color="black", marker="*", ms=10, ls="none", capsize=3, label="Dense")
                    continue
                ax.errorbar(xs, ys, yerr=err, marker="os^Dv<>p"[k % 8], ls=("-", "--", ":", "-.")[k % 4],
                            ms=7 - k % 3, capsize=3, label=series)
            ax.set_title(f"{model_name(m)}: {q.label}", fontsize=9)
            ax.set_xlabel("effective FFN sparsity (%)")
            ax.set_ylabel(q.label + (" (higher is better)" if q.higher_is_better else " (lower is better)"), fontsize=8)
            ax.legend(fontsize=7)
    return _save(fig, path)
