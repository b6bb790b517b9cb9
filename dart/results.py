"""results.json: one stable contract per run (documented in docs/evaluations.md), written atomically.

{
  "schema": 1, "status": "complete" | "failed", "error": str | null,
  "config": {... the composed config ...}, "config_hash": sha1 of it (resume compares it),
  "model": {name, origin, architecture, params, ffn_params, num_layers, hidden_size, intermediate_size, ...},
  "strategy": {"name": ..., "dynamic": bool},
  "metrics": {"<eval>/<name>": float | null, ...},
  "sparsity": {"target": float, "achieved": float, "per_layer": {"target": [...], "achieved": [...]}},
  "overhead": {"state_bytes": int, ..., "flops_ratio": float},
  "drift": {"triggers": [{"request", "step", "cosine", "threshold"}, ...], ...},
  "matched": [{"strategy", "ranking", "sparsity": {"target": the run's effective, ...}, "metrics", "paired",
               "samples"}, ...]  (eval.matched only: other strategies at the run's effective sparsity, dart.pipeline;
             one object, not a list, in results written before 2026-12; read with matched_entries),
  "timing": {"load_s", "eval_s", "total_s", ...},
  "notes": [str, ...], "versions": {...}, "cpu": {"model", "flags"} (dart.runtime.cpu)
}
Missing values are null, never 0.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

SCHEMA = 1
RESULTS = "results.json"


def _clean(obj: Any) -> Any:
    """JSON-safe: tensors and numpy scalars to Python, NaN/inf to null."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _clean(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON to a temporary file in the same folder, fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_clean(obj), f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def matched_entries(results: dict) -> list[dict]:
    """results.json `matched` as a list (eval.matched's strategies; older results hold one object)."""
    m = results.get("matched")
    if not m:
        return []
    return [m] if isinstance(m, dict) else list(m)


def flat_summary(results: dict) -> dict[str, float]:
    """A run's numbers for a tracker's summary (W&B): the metrics, sparsity, overhead, and each eval.matched
    strategy's metrics, sparsity and paired differences under `matched/<strategy>/`."""
    num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    flat = {k: v for k, v in (results.get("metrics") or {}).items() if num(v)}
    sp = results.get("sparsity") or {}
    flat.update({f"sparsity/{k}": v for k, v in sp.items() if num(v)})
    for kind, v in (sp.get("effective_by_kind") or {}).items():
        if num(v):
            flat[f"sparsity/effective/{kind}"] = v
    flat.update({f"overhead/{k}": v for k, v in (results.get("overhead") or {}).items() if num(v)})
    for m in matched_entries(results):
        pre = f"matched/{m['strategy']}"
        flat.update({f"{pre}/{k}": v for k, v in (m.get("metrics") or {}).items() if num(v)})
        flat.update({f"{pre}/paired/{k}": v for k, v in (m.get("paired") or {}).items() if num(v)})
        flat.update({f"{pre}/sparsity/{k}": v for k, v in (m.get("sparsity") or {}).items() if num(v)})
    return flat


def config_hash(config: dict) -> str:
    return hashlib.sha1(json.dumps(_clean(config), sort_keys=True).encode()).hexdigest()[:16]


def read_results(path: str | os.PathLike) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(result: dict | None, expected_hash: str | None = None) -> bool:
    if not result or result.get("status") != "complete" or result.get("schema") != SCHEMA:
        return False
    return expected_hash is None or result.get("config_hash") == expected_hash
