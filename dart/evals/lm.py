"""`DartLM`: lm-evaluation-harness's HFLM with a pruned model, whose loglikelihood path knows where each
request's context ends (docs/method.md section 6).

lm-eval scores a request (context, continuation) from the logits of (context + continuation)[:-1]. Under
protocol=causal the engine's prompt is the context minus its last token: its statistics (and the detector's
baseline) come from there, the last context token is the first teacher-forced input and everything from it on is
pruned (GRIFFIN's classification mode), with the drift detector live over the continuation. That is exactly
teacher-forced decoding, run here by dart.engine.forcing in a few forwards:

- shared contexts: the requests of a question share their prompt, so it runs once (the trace pass: statistics,
  masks, detector baseline) and all of its continuations are scored against its KV cache in one batched forward;
  continuations that feed the same tokens (one-token answers: only the target differs) are one row;
- a drift trigger inside a continuation recomputes only that row's tokens after it (forcing's rounds);
- prompts with a common head (the few-shot examples of MMLU-style 5-shot prompts) run that head once;
- several questions per batch (`batch_size` prompts), each row with its own statistics, masks and detector, so
  the batch size does not change any log-likelihood.
protocol=compat keeps the published same-pass semantics: one forward over context + continuation per request,
the mask traced from the very tokens it scores (Controller.score).
"""
from __future__ import annotations

import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from tqdm import tqdm

from dart.engine.forcing import MODES, force
from dart.errors import choice_error


class DartLM(HFLM):
    def __init__(self, model, tokenizer, strategy, batch_size: int = 1, max_length: int | None = None,
                 forcing: str = "chunked", **kwargs):
        if forcing not in MODES:
            raise choice_error("forcing", forcing, MODES)
        super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=int(batch_size), max_length=max_length,
                         device=str(next(model.parameters()).device), **kwargs)
        self.strategy = strategy
        self.forcing = forcing
        self.stats = {"requests": 0, "prompts": 0, "rows": 0, "one_pass": 0}

    def _same_pass(self) -> bool:
        return self.strategy.scores_in_one_pass()

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        bs = int(override_bs or (self.batch_size if self.batch_size != "auto" else 1))
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="loglikelihood")
        try:
            results = self._one_pass(requests, bs, bar) if self._same_pass() else self._shared_contexts(requests, bs, bar)
        finally:
            bar.close()
        for (key, _, _), value in zip(requests, results):  # lm-eval's cache (--use_cache), per request as HFLM does
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, value)
        return results

    # ------------------------------------------------------------------ causal: shared prompts, chunked forcing
    def _split(self, ctx: list[int], cont: list[int]) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        """(prompt, teacher-forced tokens, forced index of the logit that predicts cont[0])."""
        inp = (ctx + cont)[-(self.max_length + 1) :][:-1]
        prompt_len = max(1, len(inp) - len(cont))  # the context (as kept) minus its last token
        return tuple(inp[:prompt_len]), tuple(inp[prompt_len:]), len(inp) - len(cont) - prompt_len

    def _shared_contexts(self, requests, bs: int, bar) -> list[tuple[float, bool]]:
        prompts: dict[tuple, int] = {}
        rows: dict[tuple, int] = {}
        row_group: list[int] = []
        row_forced: list[tuple] = []
        targets: list[tuple[int, int, list[int]]] = []  # per request: (row, first forced index, continuation)
        for _, ctx, cont in requests:
            prompt, fed, first = self._split(list(ctx), list(cont))
            g = prompts.setdefault(prompt, len(prompts))
            r = rows.setdefault((g, fed), len(rows))
            if r == len(row_group):
                row_group.append(g)
                row_forced.append(fed)
            targets.append((r, first, list(cont)))
        self.stats["requests"] += len(requests)
        self.stats["prompts"] += len(prompts)
        self.stats["rows"] += len(rows)
        prompt_list = list(prompts)
        rows_of: list[list[int]] = [[] for _ in prompt_list]
        for r, g in enumerate(row_group):
            rows_of[g].append(r)
        reqs_of_row: list[list[int]] = [[] for _ in row_group]
        for q, (r, _, _) in enumerate(targets):
            reqs_of_row[r].append(q)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for gs, shared in prompt_batches(prompt_list, bs):
            batch_rows = [r for g in gs for r in rows_of[g]]
            batch_reqs = [q for r in batch_rows for q in reqs_of_row[r]]
            scorer = _Targets(batch_rows, reqs_of_row, targets, self.device)
            force(self.model, [prompt_list[g] for g in gs], [row_forced[r] for r in batch_rows],
                  [gs.index(row_group[r]) for r in batch_rows], scorer.take, mode=self.forcing, pad_id=pad, shared=shared)
            for q, value in zip(batch_reqs, scorer.results()):
                results[q] = value
            bar.update(len(batch_reqs))
        return results

    # ------------------------------------------------------------------ compat: the published same pass
    def _one_pass(self, requests, bs: int, bar) -> list[tuple[float, bool]]:
        def key(req):
            toks = req[1] + req[2]
            return -len(toks), tuple(toks)

        order = Collator(requests, sort_fn=key)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        results = []
        for chunk in order.get_batched(n=bs):
            inputs, conts, prompts = [], [], []
            for _, ctx, cont in chunk:
                inp = (ctx + cont)[-(self.max_length + 1) :][:-1]
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
            logits = self.strategy.score(self.model, ids, torch.tensor(prompts, device=self.device), attention_mask=mask)
            scores = []
            for i, (inp, cont) in enumerate(zip(inputs, conts)):
                lp = logits[i, len(inp) - len(cont) : len(inp)].float().log_softmax(-1)
                target = torch.tensor(cont, device=lp.device)
                scores.append(torch.stack([lp.gather(-1, target[:, None]).sum(), (lp.argmax(-1) == target).all().float()]))
            for logprob, greedy in torch.stack(scores).tolist():  # one device read per batch
                results.append((logprob, greedy > 0.5))
            self.stats["requests"] += len(chunk)
            self.stats["one_pass"] += len(chunk)
            bar.update(len(chunk))
        return order.get_original(results)


def _common(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prompt_batches(prompts: list[tuple], bs: int, min_shared: int = 32, max_pad: float = 0.25) -> list[tuple[list[int], int]]:
    """Batches of at most `bs` prompts (indices) with the length of the head they share: prompts with a common
    head of at least `min_shared` tokens (the few-shot examples of a subject) go together and the head runs once;
    the others go longest first (time estimates err on the long side, out-of-memory errors come early). A batch
    of prompts without a shared head also closes before a prompt shorter than (1 - max_pad) of the batch's
    longest: right-padding then wastes at most `max_pad` of the batch's prompt positions (on a CPU, padded
    positions cost as much as real ones). Batches never change a log-likelihood (per-row state)."""
    clusters, members, head = [], [], ()
    for g in sorted(range(len(prompts)), key=lambda g: prompts[g]):  # common heads end up next to each other
        n = _common(head, prompts[g]) if members else 0
        if members and n >= min_shared:
            members.append(g)
            head = head[:n]
        else:
            if members:
                clusters.append((members, len(head)))
            members, head = [g], prompts[g]
    if members:
        clusters.append((members, len(head)))

    def split(order: list[int]) -> list[list[int]]:
        out: list[list[int]] = []
        for g in order:  # longest first
            if out and len(out[-1]) < bs and len(prompts[g]) >= (1.0 - max_pad) * len(prompts[out[-1][0]]):
                out[-1].append(g)
            else:
                out.append([g])
        return out

    batches, singles = [], []
    for members, n in clusters:  # (a cluster is not split by padding: each batch of it runs the head again)
        members.sort(key=lambda g: (-len(prompts[g]), prompts[g]))
        for part in (members[i: i + bs] for i in range(0, len(members), bs)):
            if len(part) > 1:
                batches.append((part, n))
            else:
                singles += part
    singles.sort(key=lambda g: (-len(prompts[g]), prompts[g]))
    return batches + [(part, 0) for part in split(singles)]


class _Targets:
    """Collects, from forcing's take() calls, each request's per-token log-probabilities of its continuation and
    whether greedy decoding would produce it; a later call for the same positions replaces an earlier one."""

    def __init__(self, batch_rows: list[int], reqs_of_row: list[list[int]], targets, device):
        self.device = device
        self.order = [q for r in batch_rows for q in reqs_of_row[r]]  # the batch's requests, in results() order
        place = {q: k for k, q in enumerate(self.order)}
        self.entries: list[list[tuple[int, int, int]]] = [[] for _ in batch_rows]  # per row: (j, target, slot)
        self.owner: list[int] = []  # the request (its place in self.order) of every slot
        for i, r in enumerate(batch_rows):
            for q in reqs_of_row[r]:
                _, first, cont = targets[q]
                for t, tok in enumerate(cont):
                    self.entries[i].append((first + t, tok, len(self.owner)))
                    self.owner.append(place[q])
        # per-token log-probabilities, summed per request in float64 (float64 models keep their precision end to end)
        self.lp = torch.zeros(len(self.owner), dtype=torch.float64, device=device)
        self.hit = torch.zeros(len(self.owner), dtype=torch.float32, device=device)

    def take(self, rows: list[int], j0: int, logits: torch.Tensor) -> None:
        n = logits.shape[1]
        sel_row, sel_pos, sel_tok, sel_slot = [], [], [], []
        for i, b in enumerate(rows):
            for j, tok, slot in self.entries[b]:
                if j0 <= j < j0 + n:
                    sel_row.append(i)
                    sel_pos.append(j - j0)
                    sel_tok.append(tok)
                    sel_slot.append(slot)
        if not sel_slot:
            return
        dev = logits.device
        ri, pi = torch.tensor(sel_row, device=dev), torch.tensor(sel_pos, device=dev)
        picked = logits[ri, pi]  # (k, V): only the positions that predict a continuation token
        if picked.dtype != torch.float64:  # float64 models keep their precision, the others go to fp32
            picked = picked.float()
        tok = torch.tensor(sel_tok, device=dev)
        slot = torch.tensor(sel_slot, device=self.device)
        self.lp[slot] = (picked.gather(-1, tok[:, None]).squeeze(-1) - picked.logsumexp(-1)).to(self.device, torch.float64)
        self.hit[slot] = (picked.argmax(-1) == tok).float().to(self.device)

    def results(self) -> list[tuple[float, bool]]:
        owner = torch.tensor(self.owner, dtype=torch.long, device=self.device)
        n = len(self.order)
        lp = torch.zeros(n, dtype=torch.float64, device=self.device).index_add_(0, owner, self.lp)
        miss = torch.zeros(n, dtype=torch.float64, device=self.device).index_add_(0, owner, (1.0 - self.hit).double())
        return [(a, b < 0.5) for a, b in torch.stack([lp, miss], dim=1).tolist()]  # one device read per batch
