"""Collect runs from sweep folders (or single run folders): every results.json below them, plus the jobs that
have no usable result (failed, killed, never started), so a table can show them as missing with a note.

A job folder is one with results.json or with Hydra's `.hydra/config.yaml` (written when a job starts). A sweep
folder's multirun.yaml says which jobs its last launch planned: those without a folder are reported too.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from dart.errors import ConfigError
from dart.results import RESULTS, SCHEMA



@dataclasses.dataclass
class Record:
    """One job: its results.json (complete, failed or running), or the config of a job that left none."""

    source: str  # folder (or W&B run path) it came from
    status: str  # complete | failed | running | no_results | unreadable
    config: dict
    metrics: dict = dataclasses.field(default_factory=dict)
    error: str | None = None
    results: dict = dataclasses.field(default_factory=dict)  # the whole results.json ({} when none)
    label: str = ""
    sort_key: tuple = ()

    def __post_init__(self):
        # the dtype a run computed in, not the one it asked for: `auto` is whatever the machine made of it, which
        # results.json's model section records (runs of the same dtype must not read as differing in `dtype`)
        ran = ((self.results or {}).get("model") or {}).get("dtype")
        if ran and self.config.get("dtype") != ran:
            self.config = {**self.config, "dtype": ran}

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def model(self) -> str:
        return str((self.config.get("model") or {}).get("name", "?"))

    @property
    def dtype(self) -> str | None:
        """The dtype the run computed in (None where a job that left no results asked for `auto`)."""
        d = self.config.get("dtype")
        return None if d in (None, "auto") else str(d)

    @property
    def display_model(self) -> str:
        """The model as tables show it: random weights and local folders say so (dart.models.names.model_label)."""
        from dart.models.names import model_label

        return model_label(self.config.get("model") or {}, (self.results or {}).get("model"))

    @property
    def strategy(self) -> str:
        return str((self.config.get("strategy") or {}).get("name", "?"))

    @property
    def eval_name(self) -> str:
        return str((self.config.get("eval") or {}).get("name", "?"))

    @property
    def sparsity(self) -> float | None:
        s = self.config.get("sparsity")
        return None if s is None else float(s)

    def problem(self) -> str | None:
        """One line saying why this job has no numbers (None when complete)."""
        where = f"{self.model} / {self.label or self.strategy} / eval={self.eval_name} ({self.source})"
        if self.status == "complete":
            return None
        if self.status == "failed":
            first = (self.error or "no error message").strip().splitlines()[0][:240]
            return f"failed: {where}: {first}"
        if self.status == "running":
            return f"not finished (results.json says running: killed, or still running): {where}"
        if self.status == "no_results":
            return f"no results.json (the job started but was killed before it finished, or is still running): {where}"
        return f"unreadable results.json: {where}: {self.error}"


@dataclasses.dataclass
class Collection:
    records: list[Record]
    notes: list[str]  # problems not tied to one record (jobs planned but never started, duplicates)
    roots: list[Path]


def result_config(config: dict) -> dict:
    """A Hydra job config as results.json stores it (without the keys that do not change results)."""
    from dart.pipeline import NON_RESULT_KEYS

    return {k: v for k, v in config.items() if k not in NON_RESULT_KEYS and k != "hydra"}


def _read_json(path: Path) -> tuple[dict | None, str | None]:
    try:
        return json.loads(path.read_text()), None
    except (OSError, json.JSONDecodeError) as e:
        return None, f"{type(e).__name__}: {e}"


def _hydra_config(job_dir: Path) -> dict | None:
    import yaml

    path = job_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return None


def record_from_folder(job_dir: Path) -> Record:
    path = job_dir / RESULTS
    if not path.exists():
        return Record(source=str(job_dir), status="no_results", config=result_config(_hydra_config(job_dir) or {}))
    res, err = _read_json(path)
    if res is None or not isinstance(res, dict):
        return Record(source=str(job_dir), status="unreadable", config=result_config(_hydra_config(job_dir) or {}),
                      error=err or "not a JSON object")
    if res.get("schema") != SCHEMA:
        return Record(source=str(job_dir), status="unreadable", config=res.get("config") or {},
                      error=f"schema={res.get('schema')!r}, this version reads schema {SCHEMA}")
    status = res.get("status")
    if status not in ("complete", "failed", "running"):
        return Record(source=str(job_dir), status="unreadable", config=res.get("config") or {},
                      error=f"status={status!r}; allowed: complete, failed, running")
    return Record(source=str(job_dir), status=status, config=res.get("config") or {},
                  metrics=dict(res.get("metrics") or {}) if status == "complete" else {},
                  error=res.get("error"), results=res)


def matched_records(r: Record) -> list[Record]:
    """A complete run's eval.matched strategies as records of their own (one per strategy, results.json `matched`):
    the run's config with that strategy at the run's effective sparsity and `matched_to` naming the run, so a table
    shows them beside the sweep's own rows (their KL on the same samples, against the same dense reference)."""
    from dart.results import matched_entries

    if not r.complete:
        return []
    out = []
    run = f"{r.strategy} {r.sparsity:g}" if r.sparsity is not None else r.strategy
    for m in matched_entries(r.results):
        given = m.get("sparsity") or {}
        sp = {"target": given.get("target"), "effective": given.get("effective"),
              "effective_by_kind": {k: v.get("effective") for k, v in (given.get("by_kind") or {}).items()} or None}
        config = {**r.config, "strategy": {"name": m["strategy"]}, "sparsity": sp["target"], "matched_to": run}
        results = {**r.results, "config": config, "metrics": dict(m.get("metrics") or {}), "sparsity": sp,
                   "eval": {**(r.results.get("eval") or {}), "samples": m.get("samples")}, "matched": None,
                   "drift": None}
        out.append(Record(source=f"{r.source} (eval.matched {m['strategy']})", status="complete", config=config,
                          metrics=results["metrics"], results=results))
    return out


def job_folders(root: Path) -> list[Path]:
    """Every folder below `root` (itself included) that holds a job: results.json or .hydra/config.yaml.
    Hydra's sweep-level `.hydra`-less folders, W&B and submitit folders are skipped."""
    found = {p.parent for p in root.rglob(RESULTS)}
    found |= {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
    skip = ("wandb", ".submitit")
    return sorted(f for f in found if not any(part in skip for part in f.relative_to(root).parts))


def planned_jobs(sweep_dir: Path) -> list[str] | None:
    """The job folder names (relative to the sweep folder) that the last launch of this sweep planned, from its
    multirun.yaml; None when that cannot be told (no multirun.yaml, another sweeper or sub-folder scheme).
    A multirun.yaml that cannot be parsed raises ValueError."""
    import yaml

    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
        hydra = cfg["hydra"]
        if "BasicSweeper" not in str(hydra["sweeper"].get("_target_", "")):
            return None
        from dart.sweep import SUBDIR, job_dirname

        subdir = str(hydra["sweep"].get("subdir"))
        if subdir not in ("${hydra:job.override_dirname}", SUBDIR):
            return None
        from hydra._internal.config_loader_impl import get_overrides_dirname
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = [f"{k}={v}" for k, v in (hydra["sweeper"].get("params") or {}).items()]
        task = list(hydra["overrides"].get("task") or [])
        parser = OverridesParser.create()
        jobs = BasicSweeper.split_arguments(parser.parse_overrides(params + task), None)[0]
        od = hydra["job"]["config"]["override_dirname"]
        names = [get_overrides_dirname(parser.parse_overrides(job), list(od["exclude_keys"]), od["item_sep"], od["kv_sep"])
                 for job in jobs]
        return [job_dirname(n) for n in names] if subdir == SUBDIR else names
    except Exception as e:
        raise ValueError(f"{type(e).__name__}: {e}") from e


def collect_folders(paths: list[str | Path]) -> Collection:
    if not paths:
        raise ConfigError("no folder given; pass a sweep folder (e.g. multirun/ten_offline) or a run folder")
    records, notes, roots = [], [], []
    for p in paths:
        root = Path(p)
        if not root.is_dir():
            raise ConfigError(f"{root}: no such folder; pass a sweep folder (e.g. multirun/ten_offline) or a run folder")
        jobs = job_folders(root)
        try:
            planned = planned_jobs(root)
        except ValueError as e:
            planned = None
            notes.append(f"{root}/multirun.yaml: could not tell which jobs were planned ({e})")
        if not jobs and not planned:
            raise ConfigError(
                f"{root}: no results.json (and no job folders) below it; run the sweep first, e.g. "
                "python -m dart.run -m +experiment=ten_offline, then python -m dart.tables multirun/ten_offline"
            )
        roots.append(root)
        for j in jobs:
            r = record_from_folder(j)
            records += [r, *matched_records(r)]
        if planned:
            existing = {str(j.relative_to(root)) for j in jobs}
            never = [d for d in planned if d not in existing]
            if never:
                notes.append(f"{root}: {len(never)} of the {len(planned)} jobs its last launch planned never started: "
                             + "; ".join(never))
    return Collection(records=records, notes=notes, roots=roots)


def dedupe(records: list[Record]) -> tuple[list[Record], list[str]]:
    """One record per (model, eval, label): a complete one wins over a failed one; two complete ones with the
    same config from different folders keep the newest, with a note."""
    best: dict[tuple, Record] = {}
    notes = []
    for r in records:
        key = (r.model, r.eval_name, r.label)
        old = best.get(key)
        if old is None:
            best[key] = r
        elif r.complete and old.complete:
            newer = max((old, r), key=_mtime)
            notes.append(f"two complete runs of {r.model} / {r.label} / eval={r.eval_name}: kept {newer.source}, "
                         f"not {(r if newer is old else old).source}")
            best[key] = newer
        elif r.complete:
            best[key] = r
    return list(best.values()), notes


def _mtime(r: Record) -> float:
    try:
        return (Path(r.source) / RESULTS).stat().st_mtime
    except OSError:
        return 0.0


def drift_key(entry: dict[str, Any]) -> tuple[int, int]:
    """(request, row) of a drift-log entry: a batch generated together is one request whose rows are the samples."""
    return int(entry.get("request", 0)), int(entry.get("row", 0))


def drift_windows(r: Record) -> dict[tuple[int, int], list[dict[str, Any]]]:
    """results.json drift.windows grouped by (request, row): one sample's trace each."""
    out: dict[tuple[int, int], list[dict]] = {}
    for w in ((r.results.get("drift") or {}).get("windows") or []):
        out.setdefault(drift_key(w), []).append(w)
    return out
