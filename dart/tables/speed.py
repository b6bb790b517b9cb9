"""Fidelity at measured speed (docs/results.md "Fidelity at measured speed"): every method's quality on eval=switch
(KL(dense ‖ pruned) on the two-topic pairs and on the same-document controls, with intervals) beside its measured
batch-1 decode speed in its real execution (`python -m dart.bench --config-name bench_methods`: whole-sequence masks
compacted, per-token methods on the sparse-input kernels), joined by method and target sparsity; a figure of KL
against speed-up and against tok/s; and, for a few speed-ups a user may want, the method with the lowest KL on the
two-topic pairs among those that reach it (`pick`).

A run's bench method is its strategy, except the prompt's mask with the calibration prior (strategy.prior_mix > 0):
`static_prompt_prior` (the bench's variant of that name). Runs with no bench row (another strategy, or a sparsity
the bench did not run) are left out with a note; so is a second run of one method and sparsity.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dart.errors import ConfigError
from dart.tables.collect import Record
from dart.tables.labels import strategy_name
from dart.tables.render import Table
from dart.tables.sparsity import effective, pct, target

SPEEDS = (1.2, 1.4, 1.6)  # the speed-ups the pick table answers for
NAMES = {"static_prompt_prior": "Static (prompt) + prior", "teal_published": "TEAL (published)"}
KINDS = (("switch", "two-topic pairs"), ("control", "controls"))


def load_bench(path: Path) -> dict[str, Any]:
    """A bench's results (bench.json, or the folder holding it)."""
    p = path / "bench.json" if path.is_dir() else path
    if not p.is_file():
        raise ConfigError(f"--speed {path}: no bench.json there (python -m dart.bench --config-name bench_methods)")
    return json.loads(p.read_text())


def bench_method(r: Record) -> str:
    s = r.config.get("strategy") or {}
    if r.strategy == "static_prompt" and float(s.get("prior_mix") or 0.0) > 0.0:
        return "static_prompt_prior"
    return r.strategy


def method_name(m: str) -> str:
    return NAMES.get(m) or strategy_name(m)


def bench_rows(bench: dict[str, Any]) -> dict[tuple[str, float], dict[str, Any]]:
    """Batch-1 rows of the lean loop by (method, target sparsity); dense as ("dense", 0.0). A bench method that is a
    variant (e.g. teal_published_cpu) also answers for its strategy's runs where no other bench method is that
    strategy."""
    from dart.compose import compose, options

    out = {}
    for row in bench["rows"]:
        if row.get("batch", 1) == 1 and row["loop"] == "lean" and row["mode"] in ("dense", "compacted", "sparse"):
            out[(row.get("method") or "static_prompt", round(float(row["sparsity"]), 4))] = row
    methods = {m for m, _ in out}
    strategies = set(options("strategy"))
    for m in sorted(methods - strategies):
        base = str(compose([f"+variant={m}"]).strategy.name) if m in options("variant") else None
        if base is not None and base not in methods:
            out.update({(base, sp): row for (mm, sp), row in list(out.items()) if mm == m})
    return out


def _kl(r: Record, kind: str) -> tuple[float | None, float | None, float | None]:
    m, key = r.metrics, f"{r.eval_name}/{kind}/kl"
    if r.strategy == "dense" and key not in m:
        return 0.0, 0.0, 0.0
    return m.get(key), m.get(key + "_lo"), m.get(key + "_hi")


def points(records: list[Record], bench: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """One point per (method, target sparsity) found in both: speed, tok/s, effective sparsity (both units), KL."""
    rows, notes, seen, left = bench_rows(bench), [], set(), []
    out = []
    dense = rows.get(("dense", 0.0))
    if dense is None:
        raise ConfigError("the bench has no dense batch-1 row of the lean loop: its speed-ups have no reference")
    for r in records:
        if not r.complete:
            continue
        m = bench_method(r)
        # the sparsity the run asked for (its measured target can differ by a rounding: floor((1 - s) I) neurons)
        t = 0.0 if r.strategy == "dense" else (r.config.get("sparsity") if r.config.get("sparsity") is not None
                                               else target(r))
        key = (m, round(float(t or 0.0), 4))
        row = rows.get(key)
        if row is None:
            left.append(r.label)
            continue
        if key in seen:
            notes.append(f"{r.label} ({r.source}): a second run of {method_name(m)} at {pct(t)}% — the first is shown")
            continue
        seen.add(key)
        sp = r.results.get("sparsity") or {}
        kl = {k: _kl(r, k) for k, _ in KINDS}
        out.append({"method": m, "target": float(t or 0.0), "effective": effective(r, "switch"),
                    "effective_model": sp.get("effective_model"), "execution": row["mode"],
                    "tok_s": float(row["tokens_per_s"]), "speedup": float(row["speedup"] or 1.0),
                    "speedup_ci": row.get("speedup_ci"), "kl": kl, "label": r.label})
    if ("dense", 0.0) not in seen:  # no dense job in the sweeps: KL(dense ‖ dense) is 0 by definition
        out.append({"method": "dense", "target": 0.0, "effective": 0.0, "effective_model": 0.0, "execution": "dense",
                    "tok_s": float(dense["tokens_per_s"]), "speedup": 1.0, "speedup_ci": None,
                    "kl": {k: (0.0, 0.0, 0.0) for k, _ in KINDS}, "label": "Dense"})
    if left:
        notes.append(f"{len(left)} runs have no bench row (another strategy or sparsity): {', '.join(sorted(left))}")
    notes.append(f"dense decodes at {dense['tokens_per_s']:.1f} tok/s on this bench's machine (batch 1, lean loop); "
                 f"{bench.get('config', {}).get('model', '?')} in {bench.get('config', {}).get('dtype', '?')}")
    return sorted(out, key=lambda p: (p["speedup"], p["method"])), notes


def _ci(v, lo, hi, fmt="{:.3f}") -> str:
    if v is None:
        return "–"
    return fmt.format(v) + (f" [{fmt.format(lo)}, {fmt.format(hi)}]" if lo is not None and hi is not None else "")


def table(pts: list[dict[str, Any]], notes: list[str]) -> Table:
    header = ["Method", "target %", "FFN eff. %", "model eff. %", "execution", "tok/s", "speed-up [95% CI]"]
    header += [f"KL {name} [95% CI]" for _, name in KINDS]
    body = []
    for p in pts:
        ci = p["speedup_ci"]
        speed = f"{p['speedup']:.2f}x" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        body.append([method_name(p["method"]), pct(p["target"]), pct(p["effective"]), pct(p["effective_model"]),
                     p["execution"], f"{p['tok_s']:.1f}", speed] + [_ci(*p["kl"][k]) for k, _ in KINDS])
    return Table(name="speed", title="Fidelity at measured decode speed (batch 1): KL(dense ‖ pruned) on eval=switch "
                 "beside each method's measured speed-up in its real execution", columns=header, rows=body,
                 notes=notes + ["FFN eff.: the FFN weight reads skipped on the two-topic pairs (the matched tables' "
                                "unit); model eff.: over the attention and FFN projections' reads (TEAL's model-wide "
                                "figure; per-token methods only); execution: compacted (the kept neurons' prefix) "
                                "or sparse (sparse-input kernels)"])


def pick_table(pts: list[dict[str, Any]], speeds=SPEEDS) -> Table:
    """For each speed-up s: among the methods whose measured speed-up is at least s, the lowest KL on the two-topic
    pairs (its interval, and the runner-up's)."""
    body = []
    for s in speeds:
        ok = sorted((p for p in pts if p["speedup"] >= s and p["kl"]["switch"][0] is not None),
                    key=lambda p: p["kl"]["switch"][0])
        if not ok:
            body.append([f"{s:.1f}x", "none reaches it", "–", "–", "–"])
            continue
        best = ok[0]
        nxt = ok[1] if len(ok) > 1 else None
        body.append([f"{s:.1f}x", f"{method_name(best['method'])} {pct(best['target'])}%",
                     f"{best['speedup']:.2f}x", _ci(*best["kl"]["switch"]),
                     "–" if nxt is None else f"{method_name(nxt['method'])} {pct(nxt['target'])}%: "
                                             f"{_ci(*nxt['kl']['switch'])} at {nxt['speedup']:.2f}x"])
    return Table(name="speed_pick", title="Which method at a given decode speed-up: the lowest KL on the two-topic "
                 "pairs among the methods that reach it (measured, batch 1)",
                 columns=["at least", "pick", "its speed-up", "KL [95% CI]", "runner-up"], rows=body,
                 notes=["a method's speed-up is the median of its paired per-repeat ratios to dense in one bench run; "
                        "read the intervals in the table above before trusting a near tie"])


def figure(pts: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    methods = list(dict.fromkeys(p["method"] for p in sorted(pts, key=lambda p: p["method"])))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, x, xlabel in ((axes[0], "speedup", "decode speed-up over dense (batch 1, measured)"),
                          (axes[1], "tok_s", "decode tokens per second (batch 1, measured)")):
        for i, m in enumerate(methods):
            ps = sorted((p for p in pts if p["method"] == m and p["kl"]["switch"][0] is not None), key=lambda p: p[x])
            if not ps:
                continue
            ys = [max(p["kl"]["switch"][0], 1e-3) for p in ps]
            err = [[y - max(p["kl"]["switch"][1] or y, 1e-3) for y, p in zip(ys, ps)],
                   [max(p["kl"]["switch"][2] or y, 1e-3) - y for y, p in zip(ys, ps)]]
            marker = "^" if ps[0]["execution"] == "sparse" else ("o" if m != "dense" else "s")
            ax.errorbar([p[x] for p in ps], ys, yerr=err, marker=marker, color=colours[i % len(colours)],
                        linestyle="-." if ps[0]["execution"] == "sparse" else "-", capsize=2, label=method_name(m))
            for p, y in zip(ps, ys):
                if p["method"] != "dense":
                    ax.annotate(f"{p['target']:.0%}", (p[x], y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("KL(dense ‖ pruned), two-topic pairs (log)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].axvline(1.0, color="grey", linewidth=0.5)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
