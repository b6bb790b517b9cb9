"""Mask execution: the module that replaces each decoder layer's FFN while a strategy is attached.

Three ways to run, chosen per forward by the controller's plan:
- dense:     the full FFN (and, while tracing, the statistic update);
- masked:    a = a * mask (any batch: one mask per row, optionally only at some positions);
- compacted: a single sequence whose kept neurons were moved to a contiguous prefix of k rows runs only that
             prefix: down(act(gate[:k] x) * up[:k] x). Same result as masked, k/I of the FFN weight bytes.
             A batch runs the union of its rows' kept sets as the prefix, each row masked inside it
             (dart.engine.union): down((act(gate[:k] x) * up[:k] x) * M[:, :k]).
Reordering is in place (permute_neurons), so compaction costs no extra weight memory; the model's own
parameters share storage with these tensors and are put back in order when the strategy detaches.
Inside a decode loop (dart.kernels.enabled) the products of a decode step run through the CPU decode kernels: the
gated input in one pass over gate and up, the down projection on its kept columns; elsewhere torch runs them.
"""
from __future__ import annotations

import torch
from torch import nn

from dart import kernels
from dart.engine.adapters import FFNWeights


class PrunableFFN(nn.Module):
    def __init__(self, original: nn.Module, weights: FFNWeights, index: int, controller):
        super().__init__()
        self.original = original  # kept (not as a submodule) to restore on detach
        object.__setattr__(self, "_controller", controller)
        self.w = weights
        self.index = index
        self.width = weights.w_in[0].shape[0]

    def __getattr__(self, name):  # keep attribute access of the wrapped module working (e.g. .gate_proj)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["original"], name)

    def intermediate(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        return intermediate(self.w, x, k)

    def down(self, a: torch.Tensor, k: int | None = None) -> torch.Tensor:
        return down(self.w, a, k)

    def compacted(self, x: torch.Tensor, k: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The FFN on its first k neurons only; rows (B, I): each row's mask in the physical order, applied inside
        the prefix (a batch run on the union of its rows' kept sets, dart.engine.union)."""
        return compacted(self.w, x, k, rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._controller.run_ffn(self, x)


def intermediate(w: FFNWeights, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """The activation a (..., I) entering the down projection; k: of the first k neurons only."""
    if w.gated:
        (g, u), (bg, bu) = w.w_in, w.b_in
        if k is not None:
            g, u = g[:k], u[:k]
            bg, bu = (bg[:k] if bg is not None else None), (bu[:k] if bu is not None else None)
        if bg is None and bu is None:
            return kernels.gated(x, g, u, w.act)
        return w.act(kernels.linear(x, g, bg)) * kernels.linear(x, u, bu)
    fc, b = w.w_in[0], w.b_in[0]
    if k is not None:
        fc, b = fc[:k], (b[:k] if b is not None else None)
    return w.act(kernels.linear(x, fc, b))


def down(w: FFNWeights, a: torch.Tensor, k: int | None = None) -> torch.Tensor:
    wd = w.w_down_t if k is None else w.w_down_t[:k]  # neuron-major (I, D): the prefix is the first k neurons
    # the (D, k) weight itself: a Linear's own rows, its first k columns (row stride I)
    out = kernels.linear(a, wd.t()) if kernels.fits(a, wd.t()) else torch.matmul(a, wd)
    return out if w.b_down is None else out + w.b_down


def compacted(w: FFNWeights, x: torch.Tensor, k: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    a = intermediate(w, x, k)
    if rows is not None:
        a = a * rows[:, None, :k]
    return down(w, a, k)


def _rows(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(tensor, dim) to index neurons along: a transposed view (a Linear down projection's (D, I) weight seen as
    (I, D)) is indexed through its own row-major storage, along its columns: row-by-row copies, not a transposition."""
    if t.dim() == 2 and not t.is_contiguous() and t.t().is_contiguous():
        return t.t(), 1
    return t, 0


@torch.no_grad()
def move_neurons(t: torch.Tensor, dst: torch.Tensor, src: torch.Tensor) -> None:
    """In place: neuron dst[i] of t becomes its neuron src[i] (a neuron-major tensor or view)."""
    base, dim = _rows(t)
    if kernels.move(base, dim, dst, src):  # a CPU kernel where it applies (columns: several times torch's speed)
        return
    if dim == 0:
        base.index_copy_(0, dst, base.index_select(0, src))
    else:  # columns: advanced indexing is about twice as fast as index_select along dim 1 on a CPU
        base[:, dst] = base[:, src]


@torch.no_grad()
def permute_neurons(weights: FFNWeights, order: torch.Tensor, extra: list[torch.Tensor] = ()) -> None:
    """Reorder neurons in place: new row i = old row order[i], for every neuron-major tensor (and `extra`)."""
    for t in [*weights.neuron_major, *extra]:
        base, dim = _rows(t)
        if not kernels.move(base, dim, None, order):
            base.copy_(base.index_select(0, order) if dim == 0 else base[:, order])
