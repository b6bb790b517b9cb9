"""Neuron scores (docs/method.md section 3): a static per-neuron weight from the vocabulary projection of the down
projection, times the one traced statistic.

    P = W_down^T E^T  (I x V, E = the INPUT embedding),  pmax_j = max_v |P_jv|,  pmean_j = mean_v |P_jv|
    magnitude: base     max: pmax*base     mean: pmean*base     combined: (pmax+pmean)*base
    product:   pmax*pmean*base^2      (base = ||a_j|| in l2/griffin mode, A_j in ema mode)
P is computed in chunks of the vocabulary: an I x V matrix per layer (3.7 GB for Llama-3.1-8B) is never built.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def vocab_projection_priors(w_down_t: torch.Tensor, embedding: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """(pmax, pmean) for one layer. w_down_t: (I, D) neuron-major down projection; embedding: (V, D)."""
    I, V = w_down_t.shape[0], embedding.shape[0]
    w = w_down_t.float()
    pmax = torch.zeros(I, dtype=torch.float32, device=w.device)
    psum = torch.zeros(I, dtype=torch.float32, device=w.device)
    for v0 in range(0, V, chunk):
        p = (w @ embedding[v0 : v0 + chunk].to(w.device, torch.float32).T).abs_()  # (I, chunk)
        torch.maximum(pmax, p.amax(dim=1), out=pmax)
        psum += p.sum(dim=1, dtype=torch.float32)
    return pmax, psum / V


def static_weight(ranking: str, pmax: torch.Tensor | None, pmean: torch.Tensor | None) -> torch.Tensor | None:
    """The one static per-neuron factor of a ranking (None for magnitude)."""
    if ranking == "magnitude":
        return None
    if ranking == "max":
        return pmax
    if ranking == "mean":
        return pmean
    if ranking == "combined":
        return pmax + pmean
    if ranking == "product":
        return pmax * pmean
    raise ValueError(ranking)


def scores(ranking: str, base: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Scores (L, B, I) from the statistic base (L, B, I) and the static weight (L, I) or None."""
    value = base * base if ranking == "product" else base
    return value if weight is None else value * weight[:, None, :]


@torch.no_grad()
def cached_priors(model, embedding: torch.Tensor, w_down_ts: list[torch.Tensor], chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pmax, pmean), each (L, I) on the CPU, for every layer; cached on disk by a fingerprint of the model's
    weights (computing them costs one pass over the vocabulary per layer)."""
    import hashlib

    from dart.paths import cache_root

    L, I = len(w_down_ts), w_down_ts[0].shape[0]
    probe = [float(t[:k].float().sum()) for t, k in [(w, 2) for w in w_down_ts] + [(embedding, 4)]]  # once
    key = hashlib.sha1(repr((type(model).__name__, L, I, tuple(embedding.shape),
                             [round(v, 6) for v in probe])).encode()).hexdigest()[:20]
    path = cache_root() / "priors" / f"{key}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu")
    rows = [vocab_projection_priors(w, embedding, chunk) for w in w_down_ts]  # each on its layer's device
    pmax, pmean = torch.stack([r[0].cpu() for r in rows]), torch.stack([r[1].cpu() for r in rows])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save((pmax, pmean), tmp)
    tmp.replace(path)
    return pmax, pmean


@torch.no_grad()
def ranking_weight(model, adapter, ffns, spec) -> torch.Tensor:
    """The static weight (L, I) of a vocabulary-projection ranking (spec.ranking max/mean/...) for a model's FFNs
    (dart.engine.ffn.PrunableFFN), from its cached priors."""
    pmax, pmean = cached_priors(model, adapter.embedding(model), [f.w.w_down_t for f in ffns], spec.prior_chunk)
    return static_weight(spec.ranking, pmax, pmean).contiguous()
