"""The dense reference of a batch, computed once and reused exactly by every run that scores the same batch.

eval=switch and eval=fidelity compare each pruned run with the dense model on the same tokens. In a sweep every
job recomputes the same dense forward (at 1.5B parameters on a CPU, as long as the pruned pass itself). With
`dense_cache=true` (a run setting, like `progress_s`: it changes no result) the dense logits of a batch are stored
the first time, in the model's own dtype (what the model returned: nothing is rounded), under
`<cache>/dense/<key>.safetensors`, and later runs read them instead of running the forward.

The key is everything the logits depend on: the model's weights (the sha256 of every parameter's bytes, with names,
shapes and dtypes), the device type, the torch and transformers versions, and the batch's
token ids (the whole batch: a row's logits can differ in the last bits with the batch it is computed in).
Writes are atomic (a temporary file renamed); an unreadable entry is recomputed and replaced.
Size: batch x scored tokens x vocabulary x bytes per logit (48 switch pairs on Qwen2.5-1.5B in bf16: 2.9 GB;
on SmolLM2 in fp32: 1.9 GB). `rm -r ~/.cache/dart/dense` frees it.

`MemoryCache` keeps the same logits in memory for one run only: a second strategy scored on the same batches
(`eval.matched`, the main job's static mask) reuses the first one's dense reference instead of recomputing it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from dart.disk_cache import weights_fingerprint
from dart.paths import cache_root

def batch_key(ids: torch.Tensor, prefix: int) -> bytes:
    """What identifies a batch's dense logits besides the model: its token ids (shape and values) and the prefix."""
    return f"|{tuple(ids.shape)}|{prefix}|".encode() + ids.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()


class DenseCache:
    """Dense logits of batches of one model, on disk. `logits(ids, prefix, compute)` returns what compute()
    returns (the logits that predict ids[:, prefix:]), from disk when stored."""

    def __init__(self, model, folder: Path | None = None):
        import transformers

        self.folder = Path(folder) if folder is not None else cache_root() / "dense"
        device = next(model.parameters()).device.type
        self.identity = json.dumps({"weights": weights_fingerprint(model), "device": device,
                                    "torch": torch.__version__, "transformers": transformers.__version__})
        self.hits = 0
        self.misses = 0

    def path(self, ids: torch.Tensor, prefix: int) -> Path:
        h = hashlib.sha256(self.identity.encode())
        h.update(batch_key(ids, prefix))
        return self.folder / f"{h.hexdigest()}.safetensors"

    def warm(self, model, batches: list[torch.Tensor], prefix: int) -> None:
        """Store the dense logits of every batch not stored yet, with the model as loaded: called before the
        strategy attaches, so the reference is the plain model's (a compacted model's weights are reordered in
        place, and in bf16 a dense forward over reordered weights differs in the last bits: KL ~5e-4 measured on
        Qwen2.5-1.5B), the same whichever job of a sweep runs first."""
        from dart.evals.decoding import dense_logits
        from dart.progress import phase

        todo = [ids for ids in batches if not self.path(ids, prefix).is_file()]
        if todo:
            print(f"[dart] dense reference: {len(todo)} of {len(batches)} batches computed once into {self.folder}",
                  flush=True)
        with torch.no_grad(), phase("dense reference", len(todo), unit="batch") as step:
            for ids in todo:
                self.logits(ids, prefix, lambda: dense_logits(model, ids, prefix))
                step()

    def logits(self, ids: torch.Tensor, prefix: int, compute) -> torch.Tensor:
        """compute()'s result (the dense logits of ids's positions prefix-1..), read from disk when stored."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file, save_file

        path = self.path(ids, prefix)
        if path.is_file():
            try:
                out = load_file(path)["logits"].to(ids.device)
                self.hits += 1
                return out
            except (SafetensorError, KeyError, OSError, RuntimeError):
                pass  # unreadable (a partial copy, another version): recompute and replace
        out = compute()
        self.misses += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"logits": out.detach().to("cpu").contiguous()}, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return out

    def summary(self) -> dict:
        return {"folder": str(self.folder), "hits": self.hits, "misses": self.misses}


class MemoryCache:
    """Dense logits of one run's batches, kept in memory (`logits` as DenseCache's): what the first strategy's
    comparison computed, the second one's reads, so both are scored against the very same reference. Up to
    `max_bytes` (the main job on SmolLM2: 24 x 200 positions x 49k logits in fp32, 0.94 GB); beyond, computed again."""

    MAX_BYTES = 2 << 30

    def __init__(self, max_bytes: int = MAX_BYTES):
        self.max_bytes = int(max_bytes)
        self.stored: dict[tuple, torch.Tensor] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def logits(self, ids: torch.Tensor, prefix: int, compute) -> torch.Tensor:
        key = batch_key(ids, prefix)
        if key in self.stored:
            self.hits += 1
            return self.stored[key]
        out = compute()
        self.misses += 1
        size = out.numel() * out.element_size()
        if self.bytes + size <= self.max_bytes:
            self.stored[key] = out
            self.bytes += size
        return out

    def clear(self) -> None:
        self.stored.clear()
        self.bytes = 0

    def summary(self) -> dict:
        return {"memory": True, "hits": self.hits, "misses": self.misses}
