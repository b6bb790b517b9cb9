"""Collect runs from a W&B project (online; needs an API key). Every run logs its full config and, in its
summary, the metrics under the same `<eval>/<name>` keys as results.json (dart.pipeline). Without a key, the same
numbers are in the local results.json files beside each offline-run folder: pass the sweep folder instead."""
from __future__ import annotations

from typing import Any

from dart.errors import UnavailableError
from dart.tables.collect import Collection, Record

STATES = {"finished": "complete", "failed": "failed", "crashed": "failed", "killed": "failed", "running": "running"}
NOT_METRICS = ("sparsity/", "overhead/", "_")


def record_from_run(run: Any) -> Record:
    """A W&B public-API run (config, summary, state, path/url) as a Record."""
    config = {k: v for k, v in dict(run.config).items() if not k.startswith("_")}
    summary = dict(run.summary)
    status = STATES.get(str(run.state), "failed")
    metrics = {k: v for k, v in summary.items() if "/" in k and not k.startswith(NOT_METRICS)} if status == "complete" else {}
    sparsity = {k.split("/", 1)[1]: v for k, v in summary.items() if k.startswith("sparsity/")}
    path = "/".join(run.path) if isinstance(run.path, (list, tuple)) else str(run.path)
    return Record(source=f"wandb:{path}", status=status, config=config, metrics=metrics,
                  error=None if status == "complete" else f"W&B state {run.state}",
                  results={"sparsity": sparsity} if sparsity else {})


def collect_wandb(project: str, group: str | None = None) -> Collection:
    from dart.config_checks import wandb_key_available

    if not wandb_key_available():
        raise UnavailableError(
            f"reading the W&B project {project!r} needs an API key (set WANDB_API_KEY or run `wandb login`). "
            "Runs log offline by default, and every run wrote results.json beside its offline-run folder: "
            "python -m dart.tables multirun/<sweep_name> reads those"
        )
    import wandb

    filters = {"group": group} if group else None
    try:
        runs = list(wandb.Api().runs(project, filters=filters))
    except Exception as e:  # network, permissions, unknown project: say which
        raise UnavailableError(f"could not list the runs of W&B project {project!r}: {type(e).__name__}: {e}") from None
    if not runs:
        raise UnavailableError(f"W&B project {project!r}{f' group {group!r}' if group else ''} has no runs")
    return Collection(records=[record_from_run(r) for r in runs], notes=[], roots=[])
