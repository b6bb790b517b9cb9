"""The per-token methods' rules (CATS, TEAL, WINA; docs/method.md section 8a): each method's per-layer state and its
FFN for one forward, in two executions that compute the same thing:

- `forward`: the reference, masked in torch (every weight read): thresholded or top-k inputs zeroed, then the dense
  products;
- `fast`: decoding on the CPU decode kernels (dart.kernels): only the weight rows of active inputs are read. TEAL and
  WINA read gate and up K-major (one row per input channel), CATS runs the gate dense and reads up only for its kept
  neurons; all three read the down projection K-major. The engine lays those weights out once (in place:
  dart.engine.adapters.kmajor_weights) the first time it decodes with the kernels.

Both return (out, zeroed, skipped): zeroed, the (B, T) count of entries the method zeroes (what `achieved` counts),
skipped, the (B, T) count of FFN weights a sparse kernel does not read (the unit of effective sparsity).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dart import kernels


# ------------------------------------------------------------------------------------------------ the rules
def keep_top(score: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k highest entries of score along its last dimension (per token)."""
    idx = score.topk(k, dim=-1).indices
    return torch.zeros(score.shape, dtype=torch.bool, device=score.device).scatter_(-1, idx, True)


class Rule:
    """One method's per-layer state and FFN, masked (`forward`) or on the kernels (`fast`); both return
    (out, zeroed, skipped) as the module says."""

    name = "rule"
    kmajor_inputs = True  # the fast path reads gate and up K-major (CATS: row by row, as stored)

    def forward(self, l: int, w, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def can_fast(self, w, x: torch.Tensor) -> bool:
        """The fast path can run this FFN on this input: a gated FFN without biases, an activation the kernels
        compute, a decode-sized CPU input inside dart.kernels.enabled."""
        return (w.gated and w.b_in[0] is None and w.b_in[1] is None and w.b_down is None
                and kernels.act_code(w.act) is not None and kernels.fits(x))

    def fast(self, l: int, w, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def units(self, w) -> int:
        """What `zeroed` is a count of, per token (CATS: the I entries of g; TEAL, WINA: the FFN's weights)."""
        return w_elements(w)

    def zeroed_is_skipped(self) -> bool:
        return True


def w_elements(w) -> int:
    """The FFN's weights: 3ID (gated) or 2ID (plain)."""
    I, D = w.w_in[0].shape
    return (3 if w.gated else 2) * I * D


def _down(w, a: torch.Tensor) -> torch.Tensor:
    out = torch.matmul(a, w.w_down_t)
    return out if w.b_down is None else out + w.b_down


class CatsRule(Rule):
    name = "cats"

    kmajor_inputs = False

    def __init__(self, thresholds: list[torch.Tensor]):
        self.t = thresholds  # per layer, 0-d in the model's dtype on the layer's device
        self.ft = [float(t) for t in thresholds]  # the same values as the kernels take them (read once, here)

    def forward(self, l, w, x):
        g = w.act(F.linear(x, w.w_in[0], w.b_in[0]))  # gate (gated) or fc (plain)
        g = torch.where(g.abs() >= self.t[l], g, 0.0)
        zeroed = (g == 0).sum(dim=-1)
        a = g * F.linear(x, w.w_in[1], w.b_in[1]) if w.gated else g
        D = w.w_down_t.shape[1]
        return _down(w, a), zeroed, zeroed * (2 * D if w.gated else D)

    def fast(self, l, w, x):
        I, D = w.w_in[0].shape
        a, kept = kernels.cats(x, w.w_in[0], w.w_in[1], self.ft[l], w.act)
        out, _ = kernels.sparse_linear(a, w.w_down_t)
        zeroed = I - kept.long()
        return out, zeroed, zeroed * (2 * D)

    def units(self, w) -> int:
        return w.w_in[0].shape[0]

    def zeroed_is_skipped(self) -> bool:
        return False


class TealRule(Rule):
    name = "teal"

    def __init__(self, t_in: list[torch.Tensor], t_down: list[torch.Tensor]):
        self.t_in, self.t_down = t_in, t_down
        self.ft_in, self.ft_down = [float(t) for t in t_in], [float(t) for t in t_down]  # as the kernels take them

    def forward(self, l, w, x):
        I, D = w.w_in[0].shape
        x = torch.where(x.abs() >= self.t_in[l], x, 0.0)
        z_in = (x == 0).sum(dim=-1)
        if w.gated:
            a = w.act(F.linear(x, w.w_in[0], w.b_in[0])) * F.linear(x, w.w_in[1], w.b_in[1])
        else:
            a = w.act(F.linear(x, w.w_in[0], w.b_in[0]))
        a = torch.where(a.abs() >= self.t_down[l], a, 0.0)
        z_down = (a == 0).sum(dim=-1)
        skipped = z_in * ((2 if w.gated else 1) * I) + z_down * D
        return _down(w, a), skipped, skipped

    def fast(self, l, w, x):
        I, D = w.w_in[0].shape
        a, n = kernels.sparse_gated(x, x, self.ft_in[l], w.w_in[0].t(), w.w_in[1].t(), w.act)
        out, n_down = kernels.sparse_linear(a, w.w_down_t, self.ft_down[l])
        skipped = (D - n[0].long()) * (2 * I) + (I - n_down.long()) * D
        return out, skipped, skipped


class TealPublishedRule(Rule):
    """TEAL as published (dart.strategies.per_token.TealPublished): a threshold per layer for each of gate, up and
    down here, and for q, k, v and o in the attention wrappers (dart.strategies.per_token_attention), which read
    `attn_t` (0-d, the model's dtype) and `attn_ft` (floats, as the kernels take them)."""

    name = "teal_published"

    def __init__(self, t: dict[str, list[torch.Tensor]]):
        self.t = t  # per projection (q, k, v, o, gate, up, down), per layer: 0-d in the model's dtype on its device
        self.ft = {p: [float(x) for x in v] for p, v in t.items()}
        self.attn_t = {p: t[p] for p in ("q", "k", "v", "o")}
        self.attn_ft = {p: self.ft[p] for p in ("q", "k", "v", "o")}

    def forward(self, l, w, x):
        I, D = w.w_in[0].shape
        xg = torch.where(x.abs() >= self.t["gate"][l], x, 0.0)
        xu = torch.where(x.abs() >= self.t["up"][l], x, 0.0)
        a = w.act(F.linear(xg, w.w_in[0], w.b_in[0])) * F.linear(xu, w.w_in[1], w.b_in[1])
        a = torch.where(a.abs() >= self.t["down"][l], a, 0.0)
        skipped = ((xg == 0).sum(dim=-1) + (xu == 0).sum(dim=-1)) * I + (a == 0).sum(dim=-1) * D
        return _down(w, a), skipped, skipped

    def fast(self, l, w, x):
        I, D = w.w_in[0].shape
        xg = torch.where(x.abs() >= self.t["gate"][l], x, 0.0)  # gate and up: each its own threshold, then the
        xu = torch.where(x.abs() >= self.t["up"][l], x, 0.0)    # kernel skips the zeros (as WINA's)
        a, n = kernels.sparse_gated(xg, xu, 0.0, w.w_in[0].t(), w.w_in[1].t(), w.act)
        out, n_down = kernels.sparse_linear(a, w.w_down_t, self.ft["down"][l])
        skipped = (2 * D - n[0].long() - n[1].long()) * I + (I - n_down.long()) * D
        return out, skipped, skipped


class WinaRule(Rule):
    name = "wina"

    def __init__(self, norms_in: list[list[torch.Tensor]], norms_down: list[torch.Tensor], sparsity: float):
        self.norms_in, self.norms_down = norms_in, norms_down  # per layer: fp32 column norms ([gate, up] or [fc]), down's
        self.sparsity = sparsity

    def forward(self, l, w, x):
        I, D = w.w_in[0].shape
        k_in, k_down = keep_count(D, self.sparsity), keep_count(I, self.sparsity)
        ax = x.abs().float()
        xs = [torch.where(keep_top(ax * c, k_in), x, 0.0) for c in self.norms_in[l]]
        if w.gated:
            a = w.act(F.linear(xs[0], w.w_in[0], w.b_in[0])) * F.linear(xs[1], w.w_in[1], w.b_in[1])
        else:
            a = w.act(F.linear(xs[0], w.w_in[0], w.b_in[0]))
        a = torch.where(keep_top(a.abs().float() * self.norms_down[l], k_down), a, 0.0)
        skipped = sum((v == 0).sum(dim=-1) for v in xs) * I + (a == 0).sum(dim=-1) * D
        return _down(w, a), skipped, skipped

    def fast(self, l, w, x):
        I, D = w.w_in[0].shape
        k_in, k_down = keep_count(D, self.sparsity), keep_count(I, self.sparsity)
        ax = x.abs().float()
        xg, xu = (torch.where(keep_top(ax * c, k_in), x, 0.0) for c in self.norms_in[l])
        a, n = kernels.sparse_gated(xg, xu, 0.0, w.w_in[0].t(), w.w_in[1].t(), w.act)
        a = torch.where(keep_top(a.abs().float() * self.norms_down[l], k_down), a, 0.0)
        out, n_down = kernels.sparse_linear(a, w.w_down_t)
        skipped = (2 * D - n[0].long() - n[1].long()) * I + (I - n_down.long()) * D
        return out, skipped, skipped


def keep_count(n: int, sparsity: float) -> int:
    """WINA's per-token k: floor((1 - sparsity) n), at least 1 (as the engine's top-k masks)."""
    return max(1, math.floor((1.0 - float(sparsity)) * n + 1e-9))


