"""One-pass scoring of whole requests (lm-eval's loglikelihood protocol, docs/method.md section 6): one forward over
prompt + continuation, driven through the controller's public API. protocol=causal takes statistics from the context
(and the next m - 1 positions) and masks the positions that predict the continuation; protocol=compat is the
published same-pass masking (trace and prune every position); fixed masks prune every position. Depth-aware
allocation needs every layer's statistics before any mask: a trace pass, the build, then the pruned pass."""
from __future__ import annotations

import torch

from dart.engine.plan import ROWS, Plan
from dart.engine.stats import ema_weights


@torch.no_grad()
def score(c, model, input_ids: torch.Tensor, prompt_len: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw):
    """Logits of one scoring forward over requests (B, T) whose first prompt_len[b] tokens are the prompt."""
    B, T = input_ids.shape
    valid = (attention_mask[:, -T:] if attention_mask is not None else torch.ones_like(input_ids)).to(torch.float32)
    pos = torch.arange(T, device=input_ids.device)[None, :]
    kwargs = dict(attention_mask=attention_mask, use_cache=False, **kw)
    if c.fixed is not None:  # the fixed masks on every position of every row: nothing to trace
        c.new_request(B)
        c.count(seen=valid.sum())
        with c.forced(Plan(prune=ROWS, compact=c.kept_prefix if B == 1 and c.compacted else None)):
            logits = model(input_ids=input_ids, **kwargs).logits
        _count(c, valid > 0, valid > 0, pos < prompt_len.to(input_ids.device)[:, None])
        return logits
    prompt_len = prompt_len.to(input_ids.device)[:, None]
    m = c.spec.masking_step
    if c.spec.protocol == "compat":
        trace, prune, prefill = valid.clone(), valid > 0, valid
    else:
        # GRIFFIN's classification mode: the last context position predicts the first continuation token, so it is
        # pruned and the statistics come from the context before it
        prompt_len = (prompt_len - 1).clamp_min(1)
        end = prompt_len + (m - 1)
        trace = valid * (pos < end)
        prune = (valid > 0) & (pos >= end)
        prefill = valid * (pos < prompt_len)
    c.new_request(B)
    decay = None
    if c.spec.statistic == "ema":  # the prompt is one forward, each traced position after it one of its own
        fresh = torch.ones(B, dtype=torch.bool, device=c.device)
        trace, decay = ema_weights(trace, float(c.spec.ema_decay), fresh, group=prefill.sum(dim=1))
    c.count(seen=valid.sum())
    c.count(traced=(trace > 0).sum())
    every = torch.ones(B, dtype=torch.bool, device=c.device)
    if c.spec.global_build:
        with c.forced(Plan(trace_w=trace, decay=decay, align=c.stats.alignment)):
            model(input_ids=input_ids, **kwargs)
        c.build(every)
        plan = Plan(prune=prune)
    else:
        plan = Plan(trace_w=trace, decay=decay, build_rows=every, prune=prune)
    with c.forced(plan):
        out = model(input_ids=input_ids, **kwargs)
    c.book.built([True] * B)
    _count(c, valid > 0, prune, pos < prompt_len)
    return out.logits


def _count(c, valid: torch.Tensor, prune: torch.Tensor, pre: torch.Tensor) -> None:
    """Effective-sparsity counts of one pass: per row, prompt and continuation positions, pruned or dense."""
    pre = pre & valid
    post = valid & ~pre
    counts = torch.stack([(prune & pre).sum(1), pre.sum(1), (prune & post).sum(1), post.sum(1)], dim=1).tolist()
    for row, (pp, pn, dp, dn) in zip(c.rows, counts):
        c.tally.count(row, "prefill", int(pp), pruned=True)
        c.tally.count(row, "prefill", int(pn - pp), pruned=False)
        c.tally.count(row, "decode", int(dp), pruned=True)
        c.tally.count(row, "decode", int(dn - dp), pruned=False)
