"""Masks from scores (method.md section 4): top-k per layer and row, or the mean threshold (the published
"auto" prune strategy: keep s_j >= mean(s)). Scores are (L, B, I); masks are bool of the same shape."""
from __future__ import annotations

import torch


def topk_mask(scores: torch.Tensor, keep: torch.Tensor | list[int]) -> torch.Tensor:
    """Keep the k highest scores of each (layer, row). keep: a per-layer list of ints, or a (B, L) tensor."""
    L, B, I = scores.shape
    if not torch.is_tensor(keep) and len(set(keep)) == 1:  # one k everywhere: a single topk call
        idx = scores.topk(int(keep[0]), dim=-1, sorted=False).indices
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True)
    k = torch.as_tensor(keep, device=scores.device)
    k = k[:, None].expand(L, B) if k.dim() == 1 else k.transpose(0, 1)  # (L, B)
    order = scores.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.arange(I, device=scores.device).expand(L, B, I)
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order, ranks < k[..., None])


def mean_mask(scores: torch.Tensor) -> torch.Tensor:
    return scores >= scores.mean(dim=-1, keepdim=True)
