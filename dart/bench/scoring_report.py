"""Outputs of python -m dart.bench.scoring (scoring.json through dart.bench.common.write_results): a markdown table
and a bar plot of the time ratio to dense per task and strategy."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def _f(v, spec=".2f", missing="–"):
    return missing if v is None else format(v, spec)


def _ratio(r: dict[str, Any]) -> str:
    ci = r.get("ratio_ci")
    return _f(r.get("ratio_to_dense")) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and r.get("strategy") != "dense" else "")


def markdown(res: dict[str, Any]) -> str:
    c, m = res["config"], res["machine"]
    lines = [
        f"Model `{c['model']}` ({c['dtype']}, {c['device']}), sparsity {c['sparsity']}, ranking {c['ranking']}, "
        f"lm-eval through `DartLM` (chunked teacher forcing, shared prompts), up to {c['limit']} documents per task "
        f"(mmlu: its first {c['mmlu_subjects']} subjects); {c.get('repeats', 1)} repeats with the strategies interleaved, "
        "× dense: the median of the per-repeat paired time ratios [bootstrap 95% interval]. "
        f"Machine: {m['processor']}, {m['cpu_count']} cores, "
        f"torch {m['torch']} ({m['torch_threads']} threads)" + (f", {m['gpu']}" if m.get("gpu") else "")
        + f", load {m['loadavg_1m']:.2f} at start, {m.get('loadavg_1m_end', 0):.2f} at the end.",
        "",
        "| task | kind | batch | strategy | docs | requests | score s | req/s | × dense | forwards | positions | re-traces | acc | max \\|Δ loglik\\| vs reference | same choices |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['task']} | {r['kind']} | {r['batch_size']} | {r['strategy']} | {r['docs']} | {r['requests']} | "
            f"{r['score_s']:.1f} | {_f(r['requests_per_s'], '.1f')} | {_ratio(r)} | {r['forwards']} | "
            f"{r['positions']} | {r['triggers']} | {_f(r['acc'], '.3f')} | {_f(r['max_loglik_diff'], '.1e')} | "
            f"{'yes' if r['same_choices_as_reference'] else ('–' if r['same_choices_as_reference'] is None else 'NO')} |")
    lines += ["", "Exactness: the first documents of each task (mmlu: the first per subject) scored one request at a "
              "time, one forward per token (`forcing=reference`), against the fast path: " + _exactness_summary(res)]
    return "\n".join(lines) + "\n"


def _exactness_summary(res: dict[str, Any]) -> str:
    checks = res["exactness"]
    if not checks:
        return "not run."
    worst = max((ch["max_loglik_diff"] or 0.0) for ch in checks)
    docs = sum(ch["docs"] for ch in checks if ch["batch_size"] == checks[0]["batch_size"])
    same = all(ch["same_choices"] for ch in checks)
    return (f"largest |difference| of any log-likelihood {worst:.1e} over {docs} documents per batch size "
            f"({len(checks)} comparisons); chosen answers {'all identical' if same else 'NOT all identical'}.")


def plot(res: dict[str, Any], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in res["rows"] if r["strategy"] != "dense"]
    if not rows:
        return None
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    sizes = sorted({r["batch_size"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 3.6), squeeze=False, sharey=True)
    width = 0.8 / len(strategies)
    for ax, bs in zip(axes[0], sizes):
        for i, s in enumerate(strategies):
            vals = [next((r["ratio_to_dense"] for r in rows if r["task"] == t and r["strategy"] == s and r["batch_size"] == bs), None)
                    for t in tasks]
            ax.bar([x + i * width for x in range(len(tasks))], [v or 0 for v in vals], width, label=s)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.axhline(1.25, color="grey", lw=0.8, ls="--")
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(tasks))], tasks, rotation=30, ha="right")
        ax.set_title(f"batch {bs}")
        ax.set_ylabel("scoring time / dense")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"lm-eval scoring time relative to dense ({res['config']['model']}, sparsity {res['config']['sparsity']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
