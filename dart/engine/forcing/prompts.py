"""The prompts' forward of chunked teacher forcing (step 1 of dart.engine.forcing): the G prompts in one forward
(right-padded, tracing as a prefill does), or their common head once and then each prompt's tail; then the KV cache
and the engine's per-row state are expanded over the continuation rows, so that a context shared by several
continuations runs once."""
from __future__ import annotations

import torch

from dart.engine.forcing.batch import Batch
from dart.engine.patch import prompt_phase
from dart.engine.plan import ROWS, Plan
from dart.engine.stats import ema_weights


def fixed_plan(c, n: int) -> Plan:
    """A forward of n rows under fixed masks (or a schedule's rows that hold theirs): every position pruned."""
    return Plan(prune=ROWS, compact=c.kept_prefix if n == 1 and c.compacted else None)


class Prompts:
    def __init__(self, batch: Batch, c, dynamic: bool, m: int | None, shared: int):
        """c: the controller (None: no engine); dynamic: a schedule runs (else fixed masks or none); m: the masking
        step; shared: the prompts' common head length (0: none)."""
        self.b, self.c, self.dynamic, self.m, self.k = batch, c, dynamic, m, shared
        self.det = c.detector if c is not None else None

    def run(self) -> None:
        """The prompts' forward; then every continuation row has its prompt's cache and engine state."""
        with prompt_phase(self.b.model):
            self._run()

    def _run(self) -> None:
        bt, c, k = self.b, self.c, self.k
        G, dev = len(bt.prefixes), bt.dev
        bt.start(1 if k else G)
        if c is not None:
            # a schedule's rows are a request each (the chunk logs number them from the first); fixed masks count one
            c.new_request(1 if k else G, requests=bt.B if self.dynamic else 1)
        if k:  # the prompts' common head: one row, then expanded over the prompts
            ids = torch.tensor([bt.prefixes[0][:k]], dtype=torch.long, device=dev)
            valid = torch.ones_like(ids, dtype=torch.bool)
            plan = self.prefill_plan(valid, "head") if self.dynamic else (fixed_plan(c, 1) if c is not None else None)
            bt.forward(ids, valid, torch.arange(k, device=dev)[None, :], plan, logits_to_keep=1)
            self.after_prefill(valid, finished=False)
            bt.select(torch.zeros(G, dtype=torch.long, device=dev))
        lens = [len(p) - k for p in bt.prefixes]
        Pmax = max(lens)
        ids = torch.full((G, Pmax), bt.pad, dtype=torch.long)
        valid = torch.zeros((G, Pmax), dtype=torch.bool)
        for g, p in enumerate(bt.prefixes):
            ids[g, : lens[g]] = torch.tensor(p[k:], dtype=torch.long)
            valid[g, : lens[g]] = True
        ids, valid = ids.to(dev), valid.to(dev)
        positions = k + torch.arange(Pmax, device=dev)[None, :].expand(G, Pmax)
        keep = 0 if bt.prefix_logits else torch.tensor(lens, device=dev)[:, None] - 1
        plan = None
        if c is not None:
            plan = self.prefill_plan(valid, "tail" if k else "whole") if self.dynamic else fixed_plan(c, G)
        logits = bt.forward(ids, valid, positions, plan, logits_to_keep=keep)
        self.after_prefill(valid, finished=True)
        for g in range(G):
            rows = [b for b in range(bt.B) if bt.group[b] == g]
            if rows:
                one = logits[g : g + 1, : lens[g]] if bt.prefix_logits else logits[g : g + 1]
                bt.take([bt.names[b] for b in rows], -lens[g] if bt.prefix_logits else -1, one.expand(len(rows), -1, -1))
        bt.select(torch.tensor(bt.group, device=dev))

    def prefill_plan(self, valid: torch.Tensor, part: str) -> Plan:
        """The prompts' trace: in one forward ("whole"), or a common head and then each prompt's tail. The statistics
        are sums over the prompt's tokens, so two parts give the same totals; the EMA's normalised prefill weights
        are split into the head's un-normalised ones and the tail's rescaling (dart.engine.stats.ema_weights)."""
        c = self.c
        w, decay = valid.to(torch.float32), None
        if c.spec.statistic == "ema":
            fresh = torch.ones(w.shape[0], dtype=torch.bool, device=w.device)
            w, decay = ema_weights(w, float(c.spec.ema_decay), fresh, head=self.k if part == "tail" else 0,
                                   normalise=part != "head")
        plan = Plan(trace_w=w, decay=decay, align=c.stats.alignment, capture=self.det is not None,
                    drift_trace_w=valid.to(torch.float32) if self.det is not None else None)
        if self.m == 0:  # the published same-pass build: mask the prefill it was traced from
            plan.build_rows = torch.ones(valid.shape[0], dtype=torch.bool, device=w.device)
            plan.prune = ROWS
        return plan

    def after_prefill(self, valid: torch.Tensor, finished: bool) -> None:
        """Counting and the detector after the prompts' forward (or their common head's: not finished)."""
        c = self.c
        if c is None:
            return
        c.count(seen=valid.sum())
        if not self.dynamic:
            return
        G = valid.shape[0]
        c.count(traced=valid.sum())
        lens = valid.sum(dim=1).tolist()
        for g in range(G):
            c.tally.count(c.rows[g], "prefill", int(lens[g]), pruned=self.m == 0)
        if self.det is not None:  # the prompt's vectors join the baseline, which may close after the whole prompt
            c.book.baseline(c.captured, valid.to(torch.float32), [int(n) for n in lens], [0 if finished else None] * G)
        if finished and self.m == 0:
            c.book.built([True] * G)
