"""Plots people would rather look at than read: the drift detector's window cosine over a generation."""
from __future__ import annotations

from pathlib import Path


def draw_drift_trace(ax, windows: list[dict], trigger_steps: list[int]) -> None:
    """Window cosine and threshold on `ax`, one line segment per trace phase (a re-trace starts a new baseline
    and threshold), each trigger a dashed line. Used by the drift eval and by dart.tables."""
    cuts = sorted(trigger_steps)
    steps, cos, tau = [], [], []
    for w in windows:
        if steps and any(steps[-1] <= c < w["step"] for c in cuts):
            steps.append(float("nan")), cos.append(float("nan")), tau.append(float("nan"))
        steps.append(w["step"]), cos.append(w["cosine"]), tau.append(w["threshold"])
    ax.plot(steps, cos, "o-", ms=3, lw=1, label="window cosine vs baseline")
    ax.plot(steps, tau, "-", color="tab:orange", lw=1, label="threshold tau")
    for i, c in enumerate(cuts):
        ax.axvline(c, color="tab:red", ls="--", lw=1, label="trigger (re-trace)" if i == 0 else None)


def plot_drift_trace(windows: list[dict], triggers: list[dict], path: Path, title: str = "") -> Path:
    """Window cosine (one point per check) against the threshold over decode steps, triggers marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    draw_drift_trace(ax, windows, [t["step"] for t in triggers])
    ax.set_xlabel("forward (decode step)")
    ax.set_ylabel("cosine")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
