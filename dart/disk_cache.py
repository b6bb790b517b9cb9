"""What is computed once per model and kept on disk under the cache (dart.paths.cache_root), and by which key.

- `weights_fingerprint(model)`: the sha256 of every parameter's name, shape, dtype and bytes: the identity of a
  model's weights as it runs (the dense references, dart.evals.dense_cache; the calibration statistics,
  dart.strategies.calibration_stats); `values_fingerprint(tensors)` that of the fp32 values of the tensors a
  result is computed from in fp32 (the vocabulary-projection priors, dart.engine.scoring);
- `stored(kind, identity, compute)`: compute() once for an identity (a JSON-able dict: the weights' fingerprint and
  everything else the result depends on) and keep it under `<cache>/<kind>/<sha of the identity>.pt`; later calls
  read it. Writes are atomic (a temporary file renamed); an unreadable entry is recomputed and replaced.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from dart.paths import cache_root


def _digest(item) -> str:
    name, p = item
    data = p.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()  # the raw bytes, any dtype
    return f"{name}|{tuple(p.shape)}|{p.dtype}|{hashlib.sha256(data).hexdigest()}"


def weights_fingerprint(model) -> str:
    """sha256 over every parameter's name, shape, dtype and bytes (about 1.2 GB/s per core: 1.5 s for a 1.5B model
    in bf16 on two cores; hashlib releases the GIL, so parameters are hashed on a thread per core). Take it from
    the model as loaded (before a strategy reorders its neurons)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        parts = list(pool.map(_digest, model.named_parameters()))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def values_fingerprint(tensors) -> str:
    """sha256 over the fp32 values (and shapes) of some tensors: the same for a model loaded in bf16 and in fp32
    where the fp32 weights are the bf16 ones (a result computed from the fp32 values, as the priors are, is then
    computed once for both)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def entry(kind: str, identity: dict) -> Path:
    """The file of one identity: <cache>/<kind>/<first 20 hex digits of the identity's sha256>.pt."""
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    return cache_root() / kind / f"{key}.pt"


def stored(kind: str, identity: dict, compute: Callable[[], Any]) -> Any:
    """compute()'s result for this identity, from disk when an earlier call stored it (torch.save of tensors,
    lists, dicts and numbers; loaded onto the CPU)."""
    path = entry(kind, identity)
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001  a partial or foreign file: recompute and replace it
            pass
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(out, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
