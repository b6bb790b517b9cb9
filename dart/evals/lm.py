"""`DartLM`: lm-evaluation-harness's HFLM with a pruned model, whose loglikelihood path knows where each
request's prompt ends (method.md section 6).

A multiple-choice request is ONE forward over (context + continuation)[:-1]. Under protocol=causal the engine
takes its statistics from the prompt (context[:-1]) and prunes from the last context position on, the positions
that predict the continuation (GRIFFIN's classification mode); compat traces and prunes every position in the
same pass, as published. Every row of a batch gets its own prompt length, statistics and masks, and padding
never enters the statistics, so the batch size does not change results. Where the drift detector could act
inside a continuation (DART under causal with m + W <= its length), that request is run exactly as teacher-forced
decoding, one token per forward; compat always scores in one forward, as published.
"""
from __future__ import annotations

import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from tqdm import tqdm


class DartLM(HFLM):
    def __init__(self, model, tokenizer, strategy, batch_size: int = 1, max_length: int | None = None, **kwargs):
        super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=int(batch_size), max_length=max_length,
                         device=str(next(model.parameters()).device), **kwargs)
        self.strategy = strategy
        self.exact_requests = 0

    @property
    def controller(self):
        return getattr(self.strategy, "controller", None)

    def _needs_decode(self, cont_len: int) -> bool:
        c = self.controller
        if c is None or c.detector is None or c.spec.protocol == "compat":
            return False  # compat is the published same-pass scoring: one forward, the detector never acts
        return cont_len >= max(c.spec.masking_step, 1) + c.detector.W

    def _batch_logits(self, ids: torch.Tensor, mask: torch.Tensor, prompt_len: torch.Tensor) -> torch.Tensor:
        if self.controller is not None:
            return self.controller.score(self.model, ids, prompt_len, attention_mask=mask)
        return self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    def _decode_logits(self, tokens: list[int], prompt_len: int) -> torch.Tensor:
        """Logits (T-1, V) of one request run as prompt + teacher-forced decoding (the detector live)."""
        from dart.evals.decoding import teacher_force

        ids = torch.tensor([tokens], device=self.device)
        out = torch.empty(len(tokens) - 1, self.model.config.vocab_size, device=self.device)

        def take(logits, start):
            out[start : start + logits.shape[1]] = logits[0, :, : out.shape[1]].float()

        teacher_force(self.model, ids, prompt_len, take)
        return out

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        def key(req):
            toks = req[1] + req[2]
            return -len(toks), tuple(toks)

        order = Collator(requests, sort_fn=key)
        bs = int(override_bs or (self.batch_size if self.batch_size != "auto" else 1))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        results = []
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="loglikelihood")
        for chunk in order.get_batched(n=bs):
            inputs, conts, prompts = [], [], []
            for _, ctx, cont in chunk:
                full = (ctx + cont)[-(self.max_length + 1) :]
                inp = full[:-1]
                inputs.append(inp)
                conts.append(cont)
                prompts.append(len(inp) - len(cont) + 1)  # the context's length within the input
            T = max(len(x) for x in inputs)
            ids = torch.full((len(inputs), T), pad, dtype=torch.long)
            mask = torch.zeros((len(inputs), T), dtype=torch.long)
            for i, x in enumerate(inputs):
                ids[i, : len(x)] = torch.tensor(x)
                mask[i, : len(x)] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            exact = [self._needs_decode(len(c)) for c in conts]
            batched = [i for i, e in enumerate(exact) if not e]
            rows: dict[int, torch.Tensor] = {}
            if batched:  # one forward over the requests that are not decoded (the decoded ones would be wasted)
                width = max(len(inputs[i]) for i in batched)
                sel = torch.tensor(batched, device=self.device)
                out = self._batch_logits(ids[sel, :width], mask[sel, :width],
                                         torch.tensor([prompts[i] for i in batched], device=self.device))
                rows = {i: out[j] for j, i in enumerate(batched)}
            scores = []
            for i, (inp, cont) in enumerate(zip(inputs, conts)):
                if exact[i]:
                    self.exact_requests += 1
                    # prompt = context[:-1]; the last context token is the first teacher-forced decode input
                    row = self._decode_logits(inp + [0], max(1, prompts[i] - 1))[: len(inp)]
                else:
                    row = rows[i][: len(inp)].float()
                lp = row[len(inp) - len(cont) :].log_softmax(-1)
                target = torch.tensor(cont, device=lp.device)
                scores.append(torch.stack([lp.gather(-1, target[:, None]).sum(), (lp.argmax(-1) == target).all().float()]))
            for logprob, greedy in torch.stack(scores).tolist():  # one device read per batch
                results.append((logprob, greedy > 0.5))
            bar.update(len(chunk))
        bar.close()
        return order.get_original(results)
