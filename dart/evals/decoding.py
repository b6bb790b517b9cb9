"""Scoring text under teacher forcing, either as one forward (prefill) or as decoding: a prefix primes the model
(and a dynamic strategy's statistics), then every later token is fed as in generation, so masks, re-traces and
the drift detector act exactly as they would when generating. Decoding runs through dart.engine.forcing:
`chunked` (a few forwards, exact) by default, `reference` (one cached forward per token) for tests.
`compare_with_dense` scores one sequence both ways, dense (the strategy paused) and pruned: eval=fidelity's and
eval=switch's per-token comparison."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from dart.engine.forcing import force

SPAN = 16  # positions per fp32 log-softmax when comparing with dense (a 150k vocabulary: 10 MB, cache-sized)


@torch.no_grad()
def teacher_force(
    model,
    ids: torch.Tensor,
    prefix_len: int | None,
    on_logits: Callable[[list[int], int, torch.Tensor], None],
    mode: str = "chunked",
    prefix_logits: bool = True,
) -> None:
    """Feed `ids` (B, T); on_logits(rows, start, logits) gets logits (len(rows), n, V) whose position t predicts
    ids[row, start + t + 1]. A later call for the same positions replaces an earlier one. prefix_logits=False:
    of the prompt's positions only the last one's logits (the others are not computed).

    prefix_len None (or >= T - 1): one forward over all of ids. Otherwise ids[:, :prefix_len] is the prompt (the
    prefill) and every later input token is teacher-forced decoding.
    """
    B, T = ids.shape
    if prefix_len is None or prefix_len >= T - 1:
        on_logits(list(range(B)), 0, model(input_ids=ids[:, :-1], use_cache=False).logits)
        return
    P = max(1, int(prefix_len))
    rows = ids.tolist()
    force(model, [r[:P] for r in rows], [r[P : T - 1] for r in rows], list(range(B)),
          lambda rs, j0, logits: on_logits(rs, P + j0, logits), mode=mode, prefix_logits=prefix_logits)


@torch.no_grad()
def token_logprobs(model, ids: torch.Tensor, prefix_len: int | None = None, mode: str = "chunked") -> torch.Tensor:
    """log p(ids[:, t+1] | ids[:, :t+1]) for t in 0..T-2, as a (B, T-1) fp32 tensor."""
    B, T = ids.shape
    out = torch.empty(B, T - 1, dtype=torch.float32, device=ids.device)

    def take(rows: list[int], start: int, logits: torch.Tensor) -> None:
        n = min(logits.shape[1], T - 1 - start)
        if n <= 0:
            return
        r = torch.tensor(rows, device=ids.device)
        targets = ids[r, start + 1 : start + 1 + n]
        lg = logits[:, :n].float()
        out[r, start : start + n] = lg.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lg.logsumexp(-1)

    teacher_force(model, ids, prefix_len, take, mode=mode)
    return out


def dense_logits(model, ids: torch.Tensor, prefix: int) -> torch.Tensor:
    """The model's raw logits (its own dtype) at the positions that predict ids[:, prefix:], from one forward."""
    return model(input_ids=ids[:, :-1], use_cache=False).logits[:, prefix - 1 :]


@dataclasses.dataclass
class DenseComparison:
    """Per continuation token (n = T - prefix) of each row, the pruned model against the dense one."""

    kl: torch.Tensor  # (B, n) KL(dense || pruned)
    top1: torch.Tensor  # (B, n) 1.0 where the pruned model's top-1 token is the dense model's
    nll: torch.Tensor  # (B, n) NLL of the true token under the pruned model
    nll_dense: torch.Tensor  # (B, n) the same under the dense model


@torch.no_grad()
def compare_with_dense(model, strategy, ids: torch.Tensor, prefix: int, forcing: str = "chunked",
                       dense_cache=None) -> DenseComparison:
    """Score the continuations ids[:, prefix:] of B sequences (B, T) twice: dense (the strategy paused, one forward)
    and pruned, as decoding for a dynamic strategy (ids[:, :prefix] the prompts, every later token teacher-forced,
    so masks and the drift detector act as in generation; the rows as one batch), in one forward otherwise.
    dense_cache (dart.evals.dense_cache.DenseCache): the dense logits from disk when this batch was scored before."""
    P = prefix

    def compute():
        with strategy.paused():
            return dense_logits(model, ids, P)

    raw = compute() if dense_cache is None else dense_cache.logits(ids, P, compute)
    targets = ids[:, P:]
    B, n = targets.shape
    kl, agree, nll, nll_dense = (torch.zeros(B, n, device=ids.device) for _ in range(4))
    for j in range(0, n, SPAN):  # the dense NLL; fp32 log-softmax a few positions at a time (cache-sized)
        ref = raw[:, j : j + SPAN].float().log_softmax(-1)
        nll_dense[:, j : j + SPAN] = -ref.gather(-1, targets[:, j : j + SPAN, None]).squeeze(-1)

    def take(rows, start, logits):  # logits[i, t] predicts ids[rows[i], start + t + 1]; keep the continuation's
        lo, hi = max(start, P - 1), min(start + logits.shape[1], P - 1 + n)
        r = torch.tensor(rows, device=ids.device)
        for a in range(lo, hi, SPAN):  # row-wise operations: the same numbers as over the whole span at once
            b = min(a + SPAN, hi)
            lp = logits[:, a - start : b - start].float().log_softmax(-1)
            span = slice(a - (P - 1), b - (P - 1))
            ref = raw[r, span].float().log_softmax(-1)
            kl[r, span] = (ref.exp() * (ref - lp)).sum(-1)
            agree[r, span] = (ref.argmax(-1) == lp.argmax(-1)).float()
            nll[r, span] = -lp.gather(-1, targets[r, span, None]).squeeze(-1)

    teacher_force(model, ids, P if getattr(strategy, "dynamic", False) else None, take, mode=forcing,
                  prefix_logits=False)
    return DenseComparison(kl, agree, nll, nll_dense)
