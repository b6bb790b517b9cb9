"""Scoring text under teacher forcing, either as one forward (prefill) or as real decoding: a prefix primes
the model (and a dynamic strategy's statistics), then every further token is one cached forward, so masks,
re-traces and the drift detector act exactly as in generation."""
from __future__ import annotations

from typing import Callable

import torch


@torch.no_grad()
def teacher_force(
    model,
    ids: torch.Tensor,
    prefix_len: int | None,
    on_logits: Callable[[torch.Tensor, int], None],
) -> None:
    """Feed `ids` (B, T) and call `on_logits(logits, start)` with the logits predicting ids[:, start+1 : ...].

    prefix_len None (or >= T): one forward over all of ids. Otherwise ids[:, :prefix_len] is the prompt (one
    prefill forward) and each later input token is a single-token forward with the KV cache.
    """
    from transformers import DynamicCache

    T = ids.shape[1]
    if prefix_len is None or prefix_len >= T - 1:
        on_logits(model(input_ids=ids[:, :-1], use_cache=False).logits, 0)
        return
    prefix_len = max(1, int(prefix_len))
    cache = DynamicCache()
    out = model(input_ids=ids[:, :prefix_len], past_key_values=cache, use_cache=True)
    on_logits(out.logits, 0)
    for t in range(prefix_len, T - 1):
        out = model(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True)
        on_logits(out.logits, t)


@torch.no_grad()
def token_logprobs(model, ids: torch.Tensor, prefix_len: int | None = None) -> torch.Tensor:
    """log p(ids[:, t+1] | ids[:, :t+1]) for t in 0..T-2, as a (B, T-1) fp32 tensor."""
    B, T = ids.shape
    out = torch.empty(B, T - 1, dtype=torch.float32, device=ids.device)

    def take(logits: torch.Tensor, start: int) -> None:
        n = logits.shape[1]
        targets = ids[:, start + 1 : start + 1 + n]
        lp = torch.log_softmax(logits.float(), dim=-1)
        out[:, start : start + n] = lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    teacher_force(model, ids, prefix_len, take)
    return out
