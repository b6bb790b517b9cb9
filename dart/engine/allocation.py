"""How many neurons each layer keeps (docs/method.md section 4): uniform, an explicit per-layer list, or the
depth-aware `auto` allocation with the published constants. Vectorised over rows (sequences): (B, L)."""
from __future__ import annotations

import math

import torch

from dart.engine.spec import AutoAllocSpec


def uniform_keep(num_layers: int, width: int, sparsity: float) -> list[int]:
    """k = floor(v * I) with keep fraction v = 1 - sparsity (at least one neuron)."""
    return [max(1, math.floor((1.0 - sparsity) * width + 1e-9))] * num_layers


def list_keep(keep: list[float], width: int) -> list[int]:
    return [max(1, math.floor(float(v) * width + 1e-9)) for v in keep]


def fixed_keep(spec, num_layers: int, width: int) -> list[int] | None:
    """Per-layer keep counts that do not depend on the input (top-k with a uniform or a listed allocation), else None
    (the depth-aware allocation and the mean threshold decide them per build)."""
    if spec.mask_rule == "topk" and spec.allocation == "uniform":
        return uniform_keep(num_layers, width, spec.sparsity)
    if spec.mask_rule == "topk" and spec.allocation == "list":
        return list_keep(list(spec.layer_keep), width)
    return None


def depth_prior(num_layers: int, spec: AutoAllocSpec) -> torch.Tensor:
    """D_l: protects early and late layers (z = l / (L - 1))."""
    L = num_layers
    out = torch.ones(L, dtype=torch.float64)
    for l in range(L):
        z = l / (L - 1) if L > 1 else 0.0
        if z < spec.early_width:
            out[l] = spec.early_floor + (1 - spec.early_floor) * z / spec.early_width
        elif z > 1 - spec.late_width:
            out[l] = spec.late_floor + (1 - spec.late_floor) * (1 - z) / spec.late_width
    return out


def auto_prune_fractions(S: torch.Tensor, sparsity: float, spec: AutoAllocSpec, eps: float = 1e-6) -> torch.Tensor:
    """Per-layer prune fractions p (B, L) from layer scores S (B, L), with mean(p) = sparsity where the bounds allow.

    1. S^ = (S - min S) / (max S - min S + 1e-6), R = 1 - S^     2. P = R * D (depth prior)
    3. p = clip(B * P / sum P, lo, hi) with budget B = sparsity * L
    4. up to `iterations` times: delta = B - sum p (stop below 1e-6); spread delta over the layers that can still
       move (p < hi - eps when delta > 0, p > lo + eps when delta < 0) in proportion to P (uniformly if their P
       sums to <= eps); clip again.
    """
    S = S.to(torch.float64)
    L = S.shape[-1]
    lo, hi = spec.min_prune, spec.max_prune
    s_min, s_max = S.min(dim=-1, keepdim=True).values, S.max(dim=-1, keepdim=True).values
    R = 1.0 - (S - s_min) / (s_max - s_min + 1e-6)
    P = R * depth_prior(L, spec).to(S.device)
    budget = sparsity * L
    p = (budget * P / P.sum(dim=-1, keepdim=True).clamp_min(1e-30)).clamp(lo, hi)
    for _ in range(spec.iterations):
        delta = budget - p.sum(dim=-1, keepdim=True)
        active = delta.abs() >= 1e-6
        adjustable = torch.where(delta > 0, p < hi - eps, p > lo + eps)
        weight = P * adjustable
        wsum = weight.sum(dim=-1, keepdim=True)
        n_adj = adjustable.sum(dim=-1, keepdim=True).clamp_min(1)
        share = torch.where(wsum > eps, weight / wsum.clamp_min(1e-30), adjustable / n_adj)
        p = torch.where(active, (p + delta * share).clamp(lo, hi), p)
    return p.to(torch.float32)


def keep_from_prune(p: torch.Tensor, width: int) -> torch.Tensor:
    """k_l = round((1 - p_l) * I), (B, L) long."""
    return torch.round((1.0 - p.to(torch.float64)) * width).clamp_min(1).to(torch.long)
