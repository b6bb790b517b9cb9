"""Per-token input sparsity of the attention projections (TEAL as published, dart.strategies.per_token.TealPublished):
while the method is attached, each of a layer's q, k, v and o projections is replaced by a `SparseInputLinear` that
zeroes the entries of its input below the projection's threshold, token by token, in the two executions of every
per-token rule (dart.strategies.per_token_rules):

- masked (scoring, and any input the kernels do not take): x' = x where |x| >= t, then the projection as the model's
  own Linear computes it (every weight read);
- decoding on the CPU decode kernels: dart.kernels.sparse_linear on the weight laid out K-major in place (one row per
  input channel; laid out once, put back on detach), reading only the rows of active inputs.

Both count the weights a sparse kernel skips (zeroed inputs x out_features) into the engine's attention counters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dart import kernels

ATTENTION = ("q", "k", "v", "o")


class SparseInputLinear(nn.Module):
    def __init__(self, original: nn.Linear, layer: int, proj: str, engine):
        super().__init__()
        self.original = original  # a submodule: the model's parameters (and their bytes) are still counted
        object.__setattr__(self, "_engine", engine)
        self.layer, self.proj = layer, proj
        self.in_features, self.out_features = original.in_features, original.out_features
        self.wt: torch.Tensor | None = None  # (in, out) K-major view of the weight once laid out

    @property
    def weight(self) -> nn.Parameter:
        return self.original.weight

    @property
    def bias(self):
        return self.original.bias

    def lay_out(self) -> None:
        """The weight K-major for the kernels (in place: the same bytes moved, the parameter's shape unchanged)."""
        if self.wt is None:
            p = self.original.weight
            p.data = p.data.t().contiguous().t()
            self.wt = p.data.t()

    def restore(self) -> None:
        p = self.original.weight
        if not p.data.is_contiguous():
            p.data = p.data.contiguous()
        self.wt = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self._engine
        if e.is_paused or not e.sparse:
            return self.original(x)
        b = self.original.bias
        if kernels.fits(x) and (b is None or b.dtype == x.dtype):
            self.lay_out()
            out, n = kernels.sparse_linear(x, self.wt, e.rule.attn_ft[self.proj][self.layer])
            out = out if b is None else out + b
            skipped = (self.in_features - n.long()) * self.out_features
        else:
            xs = torch.where(x.abs() >= e.rule.attn_t[self.proj][self.layer], x, 0.0)
            out = F.linear(xs, self.original.weight, b)
            skipped = (xs == 0).sum(dim=-1) * self.out_features
        e.count_attention(self.layer, skipped)
        return out


def install(attn: nn.Module, layer: int, engine) -> dict[str, SparseInputLinear]:
    """Put the four wrappers into one attention module; `remove` puts the originals back."""
    out = {}
    for p in ATTENTION:
        name = f"{p}_proj"
        out[p] = SparseInputLinear(getattr(attn, name), layer, p, engine)
        setattr(attn, name, out[p])
    return out


def remove(attn: nn.Module, wrappers: dict[str, SparseInputLinear]) -> None:
    for p, w in wrappers.items():
        w.restore()
        setattr(attn, f"{p}_proj", w.original)


def weights_per_token(wrappers: dict[str, SparseInputLinear]) -> int:
    """The four projections' weights (what one token reads of them, dense)."""
    return sum(w.in_features * w.out_features for w in wrappers.values())
