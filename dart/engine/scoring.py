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
def vocab_projection_priors(w_down_t: torch.Tensor, embedding: torch.Tensor, chunk: int = 8192,
                            step=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(pmax, pmean) for one layer, in fp32. w_down_t: (I, D) neuron-major down projection; embedding: (V, D).
    `step()` is called after every chunk of the vocabulary (progress)."""
    I, V = w_down_t.shape[0], embedding.shape[0]
    w = w_down_t.float()
    pmax = torch.zeros(I, dtype=torch.float32, device=w.device)
    psum = torch.zeros(I, dtype=torch.float32, device=w.device)
    for v0 in range(0, V, chunk):
        p = (w @ embedding[v0 : v0 + chunk].to(w.device, torch.float32).T).abs_()  # (I, chunk)
        torch.maximum(pmax, p.amax(dim=1), out=pmax)
        psum += p.sum(dim=1, dtype=torch.float32)
        if step is not None:
            step()
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
def cached_priors(embedding: torch.Tensor, w_down_ts: list[torch.Tensor], chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pmax, pmean), each (L, I) on the CPU, for every layer; computed once per model's weights and kept on disk
    (dart.disk_cache: one pass over the vocabulary per layer, minutes at 1.5B), with progress lines while it runs.
    Call it on the model as loaded (its neurons in their original order)."""
    import math

    from dart.disk_cache import stored, values_fingerprint
    from dart.progress import phase

    L, I, V = len(w_down_ts), w_down_ts[0].shape[0], embedding.shape[0]

    def compute():
        label = f"vocabulary-projection priors ({L} layers x {I} neurons x {V} tokens, once per model)"
        with phase(label, L * math.ceil(V / chunk), unit="chunk") as step:
            rows = [vocab_projection_priors(w, embedding, chunk, step) for w in w_down_ts]  # each on its layer's device
        return torch.stack([r[0].cpu() for r in rows]), torch.stack([r[1].cpu() for r in rows])

    identity = {"values": values_fingerprint([embedding, *w_down_ts]), "what": "vocab_projection_priors", "layers": L,
                "chunk": int(chunk), "compute": "float32"}
    pmax, pmean = stored("priors", identity, compute)
    return pmax, pmean


@torch.no_grad()
def ranking_weight(model, adapter, ffns, spec) -> torch.Tensor:
    """The static weight (L, I) of a vocabulary-projection ranking (spec.ranking max/mean/...) for a model's FFNs
    (dart.engine.ffn.PrunableFFN), from its cached priors."""
    pmax, pmean = cached_priors(adapter.embedding(model), [f.w.w_down_t for f in ffns], spec.prior_chunk)
    return static_weight(spec.ranking, pmax, pmean).contiguous()
