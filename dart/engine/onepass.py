"""One-forward scoring of whole requests (lm-eval's loglikelihood protocol, method.md section 6), as a mixin of
`Controller`: protocol=compat (the published same-pass masking) and fixed masks."""
from __future__ import annotations

import torch

from dart.engine.plan import ROWS, Plan
from dart.engine.stats import ema_weights


class OnePassScoring:
    @torch.no_grad()
    def score(self, model, input_ids: torch.Tensor, prompt_len: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw):
        """Logits of one scoring forward over requests (B, T) whose first prompt_len[b] tokens are the prompt.

        causal: statistics from the prompt (and the next m-1 positions), masks from position prompt_len-1+m-1
        on, i.e. on the positions that predict the continuation. compat: trace and prune every position.
        """
        B, T = input_ids.shape
        valid = (attention_mask[:, -T:] if attention_mask is not None else torch.ones_like(input_ids)).to(torch.float32)
        if self.fixed is not None:  # the fixed masks on every position of every row: nothing to trace
            self._new_request(B)
            self.tokens_seen += valid.sum()
            self._forced = Plan(prune=ROWS, compact=self.kept_prefix if B == 1 and self.compacted else None)
            try:
                logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kw).logits
            finally:
                self._forced = None
            pos = torch.arange(T, device=input_ids.device)[None, :]
            self._count_pass(valid > 0, valid > 0, pos < prompt_len.to(input_ids.device)[:, None])
            return logits
        pos = torch.arange(T, device=input_ids.device)[None, :]
        prompt_len = prompt_len.to(input_ids.device)[:, None]
        m = self.spec.masking_step
        if self.spec.protocol == "compat":
            trace = valid.clone()
            prune = valid > 0
            prefill = valid
        else:
            # GRIFFIN's classification mode (method.md 6): the last context position predicts the first
            # continuation token, so it is pruned and the statistics come from the context before it
            prompt_len = (prompt_len - 1).clamp_min(1)
            end = prompt_len + (m - 1)
            trace = valid * (pos < end)
            prune = (valid > 0) & (pos >= end)
            prefill = valid * (pos < prompt_len)
        self._new_request(B)
        decay = None
        if self.spec.statistic == "ema":
            d = float(self.spec.ema_decay)
            w0, _ = ema_weights(prefill, d, torch.ones(B, dtype=torch.bool, device=self.device))
            steps = (pos - prompt_len + 1).clamp_min(0)  # decode step index k of the traced positions after the prompt
            tail = (1 - d) * torch.pow(torch.tensor(d, device=self.device), (m - 1 - steps).clamp_min(0))
            lead = d ** max(m - 1, 0)
            trace = torch.where(prefill > 0, w0 * lead, tail * trace)  # compat: the whole request is the prefill
            decay = torch.zeros(B, device=self.device)
        self.tokens_seen += valid.sum()
        self.tokens_traced += (trace > 0).sum()
        all_rows = torch.ones(B, dtype=torch.bool, device=self.device)
        self.builds += B
        kwargs = dict(attention_mask=attention_mask, use_cache=False, **kw)
        try:
            if self.spec.global_build:
                self._forced = Plan(trace_w=trace, decay=decay, align=self.stats.alignment)
                model(input_ids=input_ids, **kwargs)
                self._build(all_rows)
                self._forced = Plan(prune=prune)
            else:
                self._forced = Plan(trace_w=trace, decay=decay, build_rows=all_rows, prune=prune)
            out = model(input_ids=input_ids, **kwargs)
        finally:
            self._forced = None
        self.has_mask = [True] * B
        self._count_pass(valid > 0, prune, pos < prompt_len)
        return out.logits

    def _count_pass(self, valid: torch.Tensor, prune: torch.Tensor, pre: torch.Tensor) -> None:
        """Effective-sparsity counts of one pass: per row, prompt and continuation positions, pruned or dense."""
        pre = pre & valid
        post = valid & ~pre
        counts = torch.stack([(prune & pre).sum(1), pre.sum(1), (prune & post).sum(1), post.sum(1)], dim=1).tolist()
        for b, (pp, pn, dp, dn) in enumerate(counts):
            self._count(b, "prefill", int(pp), pruned=True)
            self._count(b, "prefill", int(pn - pp), pruned=False)
            self._count(b, "decode", int(dp), pruned=True)
            self._count(b, "decode", int(dn - dp), pruned=False)
