"""Exact chunked teacher forcing: teacher-forced text under any strategy in a few forwards instead of one forward per
token, equal to token-by-token decoding (mode `reference`, dart.engine.stepper) within float tolerance.

The work is G prefixes (prompts; forward 0 is a prefix's prefill) and B continuations: row b continues prefix
group[b] and feeds its teacher-forced tokens forced[b] one by one (forward k >= 1 feeds forced[b][k-1]). Run token
by token, the schedule (dart.engine.schedule) acts between tokens: trace until the masking step, build, prune, check a
drift window every W pruned tokens, re-trace after a trigger, release at step r. Between two such events nothing in
the schedule changes and attention is causal, so one forward over all the tokens up to the next event gives the same
logits and the same monitored attention outputs as one forward per token. Here:

1. the G prefixes run in one forward (right-padded: explicit positions, padding hidden by the attention mask; tracing
   as the prefill does), then the KV cache and the engine's per-row state are expanded over the B rows: a context
   shared by several continuations (the choices of a question) runs once;
2. rounds over rows in the same phase of their segment (dart.engine.rounds): the trace forwards, the masks and the
   detector's baseline, then the rest of every row's tokens in pruned chunks;
3. the drift windows of a pruned chunk are evaluated on its monitored attention outputs (one device read per chunk);
   a row whose window fires at forward f is parked and re-traces in the next round, from f + 1, or, under
   strategy.published_quirks, from f itself (forward f is run again: its layers before the monitored one under the
   old masks, the others dense and tracing, as the published code's mid-forward reset). The KV cache before that
   stays valid: the columns after it are hidden from that row by the attention mask.
Rounds: 1 + the largest number of triggers in one row. Strategies without a schedule (dense, fixed masks, CATS) run
the prefixes and then every continuation in one forward.

Logits reach the caller through take(rows, j0, logits): logits[i, t] is the model's output after forced index j0 + t
of row rows[i] (j0 = -1 is the prefix's last position; with prefix_logits, -P is its first). It may hold positions
past the row's own length (padding: ignore them), and a later call for the same positions replaces an earlier one
(tokens after a trigger are recomputed).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from dart.engine.controller import controller_of
from dart.engine.patch import prompt_phase
from dart.engine.plan import ROWS, Plan
from dart.engine.stats import ema_weights
from dart.errors import ConfigError, choice_error

MODES = ("chunked", "reference")
Take = Callable[[list[int], int, torch.Tensor], None]


def has_sliding_window(config) -> bool:
    """Attention limited to a window of columns: columns hidden inside the cache would shift it, so such models are
    run without hidden columns (one prefix at a time, a re-tracing row alone)."""
    if config is None:
        return False
    types = getattr(config, "layer_types", None) or ()
    if any("sliding" in str(t) for t in types):
        return True
    return getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True) is not False


@torch.no_grad()
def force(model, prefixes: Sequence[Sequence[int]], forced: Sequence[Sequence[int]], group: Sequence[int], take: Take,
          mode: str = "chunked", prefix_logits: bool = False, pad_id: int = 0, compact_min: int = 16,
          shared: int = 0) -> None:
    """Teacher-force every row (see the module docstring); `mode` chunked (fast, exact) or reference (one forward per
    token, through the engine's own token-by-token driver). shared: the prefixes' first `shared` tokens are the same
    (few-shot examples), so they run once and the prompts' tails after them."""
    if mode not in MODES:
        raise choice_error("forcing mode", mode, MODES)
    if len(forced) != len(group) or any(not 0 <= g < len(prefixes) for g in group):
        raise ValueError("every continuation needs the index of its prefix")
    if any(len(p) < 1 for p in prefixes):
        raise ValueError("every prefix needs at least one token")
    if not forced:
        return
    if mode == "reference":
        return _reference(model, prefixes, forced, group, take, prefix_logits)
    from dart.engine.rounds import Rounds

    c = controller_of(model)
    if c is not None and c.is_paused:
        c = None
    if c is not None and c.spec.batch_mask == "shared" and len(forced) > 1:
        # one mask for the batch: every row's re-trace changes every row's mask, so the rows run in lockstep
        return _lockstep(model, prefixes, forced, group, take, prefix_logits)
    if has_sliding_window(getattr(model, "config", None)):  # no hidden cache columns: one row at a time
        for b in range(len(forced)):
            Rounds(Chunked(model, c, [prefixes[group[b]]], [forced[b]], [0], [b], take, prefix_logits, pad_id,
                           compact_min)).run()
        return
    Rounds(Chunked(model, c, prefixes, forced, group, list(range(len(forced))), take, prefix_logits, pad_id,
                   compact_min, shared)).run()


def device_of(model) -> torch.device:
    try:
        return model.get_input_embeddings().weight.device
    except AttributeError:  # a stand-in model without embeddings (tests)
        return torch.device("cpu")


def _reference(model, prefixes, forced, group, take, prefix_logits) -> None:
    """One request per row: its prefix as the prefill, then one cached forward per forced token."""
    from transformers import DynamicCache

    dev = device_of(model)
    for b, toks in enumerate(forced):
        pre = list(prefixes[group[b]])
        cache = DynamicCache()
        with prompt_phase(model):
            out = model(input_ids=torch.tensor([pre], device=dev), past_key_values=cache, use_cache=True).logits
        take([b], -len(pre), out) if prefix_logits else take([b], -1, out[:, -1:])
        for j, t in enumerate(toks):
            out = model(input_ids=torch.tensor([[t]], device=dev), past_key_values=cache, use_cache=True).logits
            take([b], j, out)


def _lockstep(model, prefixes, forced, group, take, prefix_logits) -> None:
    """Every row in one batch, one forward per token: token-by-token decoding of the whole batch (the rows share the
    engine's batch state, such as strategy.batch_mask=shared). The rows need equal prompt and forced lengths."""
    from transformers import DynamicCache

    rows = [list(prefixes[g]) for g in group]
    if len({len(p) for p in rows}) > 1 or len({len(f) for f in forced}) > 1:
        raise ConfigError("strategy.batch_mask=shared teacher-forces a batch in lockstep (one mask for all rows): its "
                          "rows need equal prompt and continuation lengths; use batch size 1 or batch_mask=per_row")
    dev = device_of(model)
    B, P = len(rows), len(rows[0])
    cache = DynamicCache()
    with prompt_phase(model):
        out = model(input_ids=torch.tensor(rows, device=dev), past_key_values=cache, use_cache=True).logits
    take(list(range(B)), -P, out) if prefix_logits else take(list(range(B)), -1, out[:, -1:])
    for j in range(len(forced[0])):
        ids = torch.tensor([[f[j]] for f in forced], device=dev)
        take(list(range(B)), j, model(input_ids=ids, past_key_values=cache, use_cache=True).logits)


class Chunked:
    """The work of one force() call and its plumbing: the KV cache, the attention mask, every row's position in its
    forced tokens, and the prompts' forward (the rounds after it: dart.engine.rounds)."""

    def __init__(self, model, c, prefixes, forced, group, names, take, prefix_logits, pad_id, compact_min, shared=0):
        self.model, self.c, self.take = model, c, take
        self.prefixes, self.forced, self.group, self.names = [list(p) for p in prefixes], [list(f) for f in forced], list(group), names
        self.prefix_logits, self.pad, self.compact_min = prefix_logits, int(pad_id), int(compact_min)
        self.dev = device_of(model)
        self.B = len(forced)
        self.N = [len(f) for f in self.forced]
        self.P = [len(self.prefixes[g]) for g in self.group]
        self.j_next = [0] * self.B
        self.holes = not has_sliding_window(getattr(model, "config", None))
        self.det = c.detector if c is not None else None
        self.dynamic = c is not None and c.fixed is None
        self.m = int(c.spec.masking_step) if self.dynamic else None
        if self.dynamic and self.m == 0 and c.spec.global_build:
            raise ConfigError("strategy.allocation=auto needs every layer's statistics before any mask, so it cannot "
                              "mask the prefill it traces (masking_step=0); use masking_step >= 1")
        # a common head of the prompts runs once (never under m = 0: its masks are built inside the prefill)
        usable = not prefix_logits and not (self.dynamic and self.m == 0) and len(self.prefixes) > 1
        self.shared = min(int(shared), min(len(p) for p in self.prefixes) - 1) if usable else 0
        if self.shared and any(p[: self.shared] != self.prefixes[0][: self.shared] for p in self.prefixes):
            raise ValueError(f"the prompts do not share their first {self.shared} tokens")
        self.cache = self.amask = None
        self.request0 = c.counts.requests if c is not None else 0
        self.parked: list[dict] = []  # rows that fired, waiting for their re-trace round

    # ------------------------------------------------------------------ plumbing
    def forward(self, ids, new_valid, positions, plan: Plan | None, logits_to_keep=0):
        """One forward of the cohort's new tokens (n, T) after the cached columns; returns the logits."""
        self.amask = torch.cat([self.amask, new_valid.long()], dim=1)
        kwargs = dict(input_ids=ids, attention_mask=self.amask, position_ids=positions, past_key_values=self.cache,
                      use_cache=True, logits_to_keep=logits_to_keep)
        if self.c is None or plan is None:
            return self.model(**kwargs).logits
        with self.c.forced(plan):
            return self.model(**kwargs).logits

    def emit(self, rows: list[int], j0: list[int], logits: torch.Tensor) -> None:
        """take() per set of rows that start at the same forced index."""
        by_start: dict[int, list[int]] = {}
        for i, j in enumerate(j0):
            by_start.setdefault(j, []).append(i)
        for j, idx in by_start.items():
            sel = logits if len(idx) == len(rows) else logits[torch.tensor(idx, device=logits.device)]
            self.take([self.names[rows[i]] for i in idx], j, sel)

    def chunk(self, rows: list[int], T: int):
        """Tokens (n, T), valid (n, T) bool and positions (n, T) of the next T forced tokens of each row."""
        n = len(rows)
        ids = torch.full((n, T), self.pad, dtype=torch.long)
        valid = torch.zeros((n, T), dtype=torch.bool)
        pos = torch.zeros((n, T), dtype=torch.long)
        for i, b in enumerate(rows):
            j = self.j_next[b]
            toks = self.forced[b][j : j + T]
            ids[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            valid[i, : len(toks)] = True
            pos[i] = self.P[b] + j + torch.arange(T)
        return ids.to(self.dev), valid.to(self.dev), pos.to(self.dev)

    def forward_index(self, rows: list[int], T: int) -> torch.Tensor:
        """Forward index k = j + 1 of each position of the next chunk (n, T), on the host."""
        return torch.tensor([self.j_next[b] for b in rows])[:, None] + 1 + torch.arange(T)[None, :]

    def select(self, index: torch.Tensor) -> None:
        """Keep (and repeat) rows `index` of the cache, the attention mask and the engine's per-row state."""
        self.cache.batch_select_indices(index)
        self.amask = self.amask.index_select(0, index)
        if self.c is not None:
            self.c.select_rows(index)

    def fixed_plan(self, n: int) -> Plan:
        c = self.c
        return Plan(prune=ROWS, compact=c.kept_prefix if n == 1 and c.compacted else None)

    # ------------------------------------------------------------------ the prompts
    def prompts(self) -> None:
        """The prompts' forward (a common head first, when there is one); then every continuation row has its prompt's
        cache and engine state."""
        with prompt_phase(self.model):
            self._prompts()

    def _prompts(self) -> None:
        from transformers import DynamicCache

        c, G, k = self.c, len(self.prefixes), self.shared
        self.cache = DynamicCache()
        self.amask = torch.zeros((1 if k else G, 0), dtype=torch.long, device=self.dev)
        if c is not None:
            # a schedule's rows are a request each (its logs number them from request0); fixed masks count one
            c.new_request(1 if k else G, requests=self.B if self.dynamic else 1)
        if k:  # the prompts' common head: one row, then expanded over the prompts
            ids = torch.tensor([self.prefixes[0][:k]], dtype=torch.long, device=self.dev)
            valid = torch.ones_like(ids, dtype=torch.bool)
            plan = self.prefill_plan(valid, "head") if self.dynamic else (self.fixed_plan(1) if c is not None else None)
            self.forward(ids, valid, torch.arange(k, device=self.dev)[None, :], plan, logits_to_keep=1)
            self.after_prefill(valid, finished=False)
            self.select(torch.zeros(G, dtype=torch.long, device=self.dev))
        lens = [len(p) - k for p in self.prefixes]
        Pmax = max(lens)
        ids = torch.full((G, Pmax), self.pad, dtype=torch.long)
        valid = torch.zeros((G, Pmax), dtype=torch.bool)
        for g, p in enumerate(self.prefixes):
            ids[g, : lens[g]] = torch.tensor(p[k:], dtype=torch.long)
            valid[g, : lens[g]] = True
        ids, valid = ids.to(self.dev), valid.to(self.dev)
        positions = k + torch.arange(Pmax, device=self.dev)[None, :].expand(G, Pmax)
        keep = 0 if self.prefix_logits else torch.tensor(lens, device=self.dev)[:, None] - 1
        plan = None
        if c is not None:
            plan = self.prefill_plan(valid, "tail" if k else "whole") if self.dynamic else self.fixed_plan(G)
        logits = self.forward(ids, valid, positions, plan, logits_to_keep=keep)
        self.after_prefill(valid, finished=True)
        for g in range(G):
            rows = [b for b in range(self.B) if self.group[b] == g]
            if rows:
                one = logits[g : g + 1, : lens[g]] if self.prefix_logits else logits[g : g + 1]
                self.take([self.names[b] for b in rows], -lens[g] if self.prefix_logits else -1, one.expand(len(rows), -1, -1))
        self.select(torch.tensor(self.group, device=self.dev))

    def prefill_plan(self, valid: torch.Tensor, part: str) -> Plan:
        """The prompts' trace: in one forward ("whole"), or a common head and then each prompt's tail. The statistics
        are sums over the prompt's tokens, so two parts give the same totals; the EMA's prefill weights d^(n-1-t) / Z_n
        (n: the prompt's length) are split into the head's d^(k-1-t) and the tail's rescaling."""
        c = self.c
        w, decay = valid.to(torch.float32), None
        if c.spec.statistic == "ema":
            fresh = torch.ones(w.shape[0], dtype=torch.bool, device=self.dev)
            w, decay = ema_weights(w, float(c.spec.ema_decay), fresh, head=self.shared if part == "tail" else 0,
                                   normalise=part != "head")
        plan = Plan(trace_w=w, decay=decay, align=c.stats.alignment, capture=self.det is not None,
                    drift_trace_w=valid.to(torch.float32) if self.det is not None else None)
        if self.m == 0:  # the published same-pass build: mask the prefill it was traced from
            plan.build_rows = torch.ones(valid.shape[0], dtype=torch.bool, device=self.dev)
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

    # ------------------------------------------------------------------ parked rows (dart.engine.rounds)
    def park(self, i: int, b: int, drop: int, t: int) -> None:
        """Keep row b's KV cache up to its trigger at forward t (the last `drop` columns are after it) and its state
        for the segment it starts (Schedule.retrace); under published_quirks also its old masks, which the trigger
        forward runs again with."""
        c = self.c
        c.tally.fold(c.rows, [i])
        cols = self.amask.shape[1] - drop
        kv = [(layer.keys[i : i + 1, :, :cols], layer.values[i : i + 1, :, :cols]) for layer in self.cache.layers]
        state = c.rows[i].copy()
        c.schedule.retrace(state, t)
        park = {"row": b, "kv": kv, "amask": self.amask[i : i + 1, :cols], "state": state}
        if c.schedule.midway or c.schedule.action == "dense":  # the masks it runs again with, in the ORIGINAL neuron
            # order (a compaction may move neurons meanwhile)
            park["M"] = [torch.zeros_like(p[:, i]).scatter_(-1, o.long(), p[:, i]) for p, o in zip(c.M.parts, c.order.parts)]
            park["kept"] = [p[:, i].clone() for p in c.tally.kept.parts]
        self.parked.append(park)

    def restore(self, batch: list[dict]) -> None:
        """The cache, attention mask and engine state of parked rows (shorter caches padded with hidden columns on the
        right)."""
        from transformers import DynamicCache

        c = self.c
        width = max(p["amask"].shape[1] for p in batch)

        def pad(x, dim):
            extra = width - x.shape[dim]
            if not extra:
                return x
            shape = list(x.shape)
            shape[dim] = extra
            return torch.cat([x, x.new_zeros(shape)], dim=dim)

        layers = len(batch[0]["kv"])
        self.cache = DynamicCache([(torch.cat([pad(p["kv"][l][0], 2) for p in batch]),
                                      torch.cat([pad(p["kv"][l][1], 2) for p in batch])) for l in range(layers)])
        self.amask = torch.cat([pad(p["amask"], 1) for p in batch])
        c.reset_rows(len(batch))
        c.restore_rows([p["state"] for p in batch])
        for i, p in enumerate(batch):
            if "M" in p:
                for part, col, o in zip(c.M.parts, p["M"], c.order.parts):
                    part[:, i] = col.gather(-1, o.long())
                for part, col in zip(c.tally.kept.parts, p["kept"]):
                    part[:, i] = col

