"""The exit status of a multirun: a sweep in which any job failed exits 1 after ALL its jobs ran, with one line per
failed job (its folder and the error). Registered as a Hydra callback in conf/config.yaml (hydra.callbacks).

A failing job does not stop a sweep (dart.pipeline.run records it as `status: failed` and returns), so Hydra itself
would exit 0. Each job's outcome is appended as one JSON line to a file in the sweep folder named by the process
that launched the sweep (the path travels to the jobs in an environment variable, so the joblib and submitit
launchers' worker processes and SLURM tasks report into it too); `on_multirun_end` reads it, prints the summary and
exits 1 if any job failed."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

ENV = "DART_SWEEP_JOBS_FILE"
SUBDIR = "${dart_dirname:${hydra:job.override_dirname}}"  # conf/config.yaml's hydra.sweep.subdir


def job_dirname(override_dirname: str) -> str:
    """A job's folder name from Hydra's override_dirname, one level deep: a value holding a path
    (eval.pairs=/data/pairs.jsonl) keeps its slashes as %2F instead of nesting the folder under its directories."""
    return str(override_dirname).replace("/", "%2F")


def register_resolver() -> None:
    """`${dart_dirname:...}` for conf/config.yaml (called by the entry points before Hydra composes)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("dart_dirname", job_dirname, replace=True)


def job_outcome(job_return) -> dict[str, Any]:
    """{"dir", "status", "error"} of one finished Hydra job: failed if dart recorded it as failed or if an exception
    escaped the job."""
    from hydra.core.utils import JobStatus

    value = job_return._return_value  # the property raises the job's exception instead of returning it
    out_dir = None
    if job_return.hydra_cfg is not None:
        out_dir = job_return.hydra_cfg.hydra.runtime.output_dir
    if job_return.status == JobStatus.FAILED:
        return {"dir": out_dir, "status": "failed", "error": f"{type(value).__name__}: {value}"}
    if isinstance(value, dict) and value.get("status") == "failed":
        return {"dir": out_dir, "status": "failed", "error": value.get("error")}
    return {"dir": out_dir, "status": "complete", "error": None}


def summary_lines(outcomes: list[dict[str, Any]]) -> list[str]:
    """One line per failed job, after a header line; empty if none failed."""
    failed = [o for o in outcomes if o.get("status") == "failed"]
    if not failed:
        return []
    lines = [f"[dart] {len(failed)} of {len(outcomes)} jobs of this sweep failed:"]
    for o in failed:
        error = " ".join(str(o.get("error") or "unknown error").split())  # one line, whatever the error held
        if len(error) > 400:
            error = error[:397] + "..."
        lines.append(f"[dart] failed: {o.get('dir')}: {error}")
    return lines


class SweepReport(Callback):
    def on_multirun_start(self, config, **kwargs) -> None:
        path = Path(str(config.hydra.sweep.dir)).resolve() / f".dart-jobs-{os.getpid()}.jsonl"
        path.unlink(missing_ok=True)
        os.environ[ENV] = str(path)

    def on_job_end(self, config, job_return, **kwargs) -> None:
        path = os.environ.get(ENV)
        if not path:  # a single run, or a job launched without the sweep's environment
            return
        outcome = job_outcome(job_return)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(outcome) + "\n")

    def on_multirun_end(self, config, **kwargs) -> None:
        path = os.environ.pop(ENV, None)
        if not path:
            return
        outcomes = []
        try:
            with open(path) as f:
                outcomes = [json.loads(line) for line in f if line.strip()]
        except OSError:
            pass
        Path(path).unlink(missing_ok=True)
        lines = summary_lines(outcomes)
        if lines:
            sys.stdout.flush()
            print("\n".join(lines), file=sys.stderr, flush=True)
            sys.exit(1)
