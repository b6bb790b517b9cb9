"""What the drift detector sees (eval=detector, dart.evals.detector): per run, how often a window of the B segment
falls below each threshold (two-topic pairs: a detection; same-document controls: a false alarm), in the monitored
last layer and in the layer that separates the two best; and the figures: the last layer's window cosines against
the thresholds, one panel per model, and the detection and false-alarm rates of every layer."""
from __future__ import annotations

import json
from pathlib import Path

from dart.models.names import model_name, model_sort_key
from dart.tables.collect import Record
from dart.tables.render import Table

KINDS = ("switch", "control")


def runs(records: list[Record]) -> list[Record]:
    return sorted((r for r in records if r.complete and ((r.results or {}).get("eval") or {}).get("layers")),
                  key=lambda r: (model_sort_key(r.model), r.sort_key, r.label))


def margins(r: Record) -> list[float]:
    return list(r.results["eval"].get("margins") or (0.1, 0.3))


def separation(entry: dict, margin: float) -> float:
    """Detections minus false alarms of one layer at one margin."""
    return entry["switch"][f"fire_{margin}"] - entry["control"][f"fire_{margin}"]


def table(records: list[Record]) -> Table | None:
    rows = []
    for r in runs(records):
        layers = r.results["eval"]["layers"]
        if not all(k in layers[0] for k in KINDS):
            continue
        ms = margins(r)
        n = {k: int(r.metrics.get(f"detector/{k}/n") or 0) for k in KINDS}
        shown = {len(layers) - 1: "last (monitored)"}
        for m in ms:  # the layer with the most detections minus false alarms at each margin (ties: the later one)
            best = max(range(len(layers)), key=lambda i: (separation(layers[i], m), i))
            shown[best] = shown.get(best, "") + (", " if best in shown else "") + f"best at margin {m}"
        for i, which in sorted(shown.items(), key=lambda kv: -kv[0] if kv[0] == len(layers) - 1 else kv[0]):
            e = layers[i]
            rows.append([model_name(r.display_model), r.label, f"{which}: {i}", n["switch"], n["control"]]
                        + [f"{100 * e['switch'][f'fire_{m}']:.0f} / {100 * e['control'][f'fire_{m}']:.0f}" for m in ms]
                        + [f"{e['switch']['drop']:.3f} / {e['control']['drop']:.3f}", f"{e['switch']['mu']:.3f}"])
    if not rows:
        return None
    ms = margins(runs(records)[0])
    notes = ["A window (W = 5 tokens of B) fires when its cosine to the prompt's centre falls below tau = mu - max(0.1 "
             "sigma, margin): margin 0.1 as published (dart_published), 0.3 for strategy=dart. Fires %: the share of "
             "samples with at least one window below tau, two-topic pairs / same-document controls (a control that "
             "fires is a false alarm). drop: mu minus the lowest window cosine, mean over samples. mu: the baseline "
             "windows' mean cosine on the two-topic pairs.",
             "Computed with the engine's DriftDetector (masking step 1) on every layer's self-attention output; "
             "`static_prompt` rows: the B segment under the prompt's mask, what DART sees until its first trigger. "
             "Best at margin m: the layer whose attention output gives the most detections minus false alarms at that "
             "margin (DART monitors the last layer)."]
    return Table(title="What the drift detector sees (eval=detector)",
                 columns=["Model", "Method", "layer", "n switch", "n control"]
                 + [f"fires % at margin {m} (switch / control)" for m in ms] + ["drop (switch / control)", "mu"],
                 rows=rows, notes=notes, name="detector")


def _cosines(r: Record) -> dict[str, list[float]]:
    """The last layer's window cosines minus mu, by kind, from detector_samples.jsonl beside results.json."""
    path = Path(r.source) / "detector_samples.jsonl"
    out: dict[str, list[float]] = {k: [] for k in KINDS}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        row = json.loads(line)
        last = row["layers"][-1]
        if row["kind"] in out:
            out[row["kind"]] += [c - last["mu"] for c in last.get("cosines") or []]
    return out


def figures(records: list[Record], out: Path) -> list[Path]:
    from dart.tables.plots import _plt, _save

    chosen = runs(records)
    if not chosen:
        return []
    plt = _plt()
    paths = []
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.0 * len(chosen), 3.2), squeeze=False)
    for ax, r in zip(axes[0], chosen):
        cos = _cosines(r)
        for kind, color in zip(KINDS, ("tab:red", "tab:blue")):
            if cos[kind]:
                ax.hist(cos[kind], bins=40, alpha=0.55, color=color, density=True, label=f"{kind} windows")
        for m, ls in zip(margins(r), ("--", ":")):
            ax.axvline(-m, color="black", ls=ls, lw=1, label=f"threshold, margin {m}")
        ax.set_title(f"{model_name(r.display_model)}: {r.label}", fontsize=9)
        ax.set_xlabel("window cosine - mu (last layer)")
        ax.legend(fontsize=7)
    paths.append(_save(fig, out / "detector_cosines.png"))
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.0 * len(chosen), 3.2), squeeze=False)
    for ax, r in zip(axes[0], chosen):
        layers = r.results["eval"]["layers"]
        x = [e["layer"] for e in layers]
        for m, ls in zip(margins(r), ("-", "--")):
            for kind, color in zip(KINDS, ("tab:red", "tab:blue")):
                ax.plot(x, [100 * e[kind][f"fire_{m}"] for e in layers], color=color, ls=ls,
                        label=f"{kind}, margin {m}")
        ax.set_title(f"{model_name(r.display_model)}: {r.label}", fontsize=9)
        ax.set_xlabel("monitored layer")
        ax.set_ylabel("samples with a window below tau (%)")
        ax.set_ylim(-3, 103)
        ax.legend(fontsize=7)
    paths.append(_save(fig, out / "detector_layers.png"))
    return paths
