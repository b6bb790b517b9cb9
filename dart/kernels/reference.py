"""The exact path of every decode kernel in plain torch: what dart.kernels computes, op by op, with torch's own
rounding of every intermediate. The kernels are tested against these (tests/test_kernels.py); the engine's and the
per-token methods' own torch paths are the same computations."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def active(x: torch.Tensor, t: float) -> torch.Tensor:
    """The inputs a sparse kernel reads: x != 0 and |x| >= t."""
    return (x != 0) & (x.abs() >= t)


def linear(x, w, b=None):
    return F.linear(x, w, b)


def gated(x, wg, wu, act):
    return act(F.linear(x, wg)) * F.linear(x, wu)


def sparse_linear(x, wt, t=0.0):
    keep = active(x, t)
    return F.linear(torch.where(keep, x, 0.0), wt.t()), keep.sum(-1).to(torch.int32)


def sparse_gated(xg, xu, t, wgt, wut, act):
    kg, ku = active(xg, t), active(xu, t)
    out = act(F.linear(torch.where(kg, xg, 0.0), wgt.t())) * F.linear(torch.where(ku, xu, 0.0), wut.t())
    return out, torch.stack([kg.sum(-1), ku.sum(-1)]).to(torch.int32)


def cats(x, wg, wu, t, act):
    g = act(F.linear(x, wg))
    keep = active(g, t)
    return torch.where(keep, g, 0.0) * F.linear(x, wu), keep.sum(-1).to(torch.int32)
