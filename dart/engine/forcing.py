"""Exact chunked teacher forcing: teacher-forced text under any strategy in a few forwards instead of one forward
per token, equal to token-by-token decoding (mode `reference`) within float tolerance.

The work is G prefixes (prompts; forward 0 is a prefix's prefill) and B continuations: row b continues prefix
group[b] and feeds its teacher-forced tokens forced[b] one by one (forward k >= 1 feeds forced[b][k-1]). Run
token by token, the engine's schedule acts between tokens: trace until the masking step m, build, prune, check a
drift window every W pruned tokens, re-trace after a trigger, release at step r. Between two such events nothing
in the schedule changes and attention is causal, so one forward over all the tokens up to the next event gives
the same logits and the same monitored attention outputs as one forward per token. Here:

1. the G prefixes run in one forward (right-padded: explicit positions, padding hidden by the attention mask;
   tracing as the prefill does), then the KV cache and the engine's per-row state are expanded over the B rows:
   a context shared by several continuations (the choices of a question) runs once;
2. a round over a set of rows in the same phase: the remaining trace forwards of every row in one dense forward
   (m - 1 after the prefill, m after a re-trace); the masks and the detector's baseline; then the rest of every
   row's tokens in one pruned forward (compacted for a single row; positions from the release step on dense);
3. the drift windows of that pruned forward are evaluated on its monitored attention outputs (host-side pressure
   counter, one device read per round); a row whose window fires at forward f is exact up to and including f;
   the next round recomputes its later tokens with the published re-trace semantics (dense for m forwards, then
   new masks and a new baseline from the re-trace tokens only). The KV cache up to f stays valid: the columns
   after it are hidden from that row by the attention mask (a single row's cache is cropped instead).
Rounds: 1 + the largest number of triggers in one row. Strategies without a schedule (dense, fixed masks, CATS)
run the prefixes and then every continuation in one forward.

Logits reach the caller through take(rows, j0, logits): logits[i, t] is the model's output after forced index
j0 + t of row rows[i] (j0 = -1 is the prefix's last position; with prefix_logits, -P is its first). It may hold
positions past the row's own length (padding: ignore them), and a later call for the same positions replaces an
earlier one (tokens after a trigger are recomputed).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from dart.engine.plan import ROWS, Plan
from dart.engine.rounds import Rounds
from dart.engine.stats import ema_weights, sequential_ema_weights
from dart.errors import ConfigError, choice_error

MODES = ("chunked", "reference")
Take = Callable[[list[int], int, torch.Tensor], None]


def controller_of(model):
    """The engine controller attached to `model` (None: dense, CATS, or nothing attached)."""
    return getattr(model, "_dart_controller", None)


def has_sliding_window(config) -> bool:
    """Attention limited to a window of columns: columns hidden inside the cache would shift it, so such models
    are run without hidden columns (one prefix at a time, a re-tracing row alone)."""
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
    """Teacher-force every row (see the module docstring); `mode` chunked (fast, exact) or reference (one
    forward per token, through the engine's own decoding schedule). shared: the prefixes' first `shared` tokens
    are the same (few-shot examples), so they run once and the prompts' tails after them."""
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
    c = controller_of(model)
    if c is not None and c._paused:
        c = None
    if has_sliding_window(getattr(model, "config", None)):  # no hidden cache columns: one row at a time
        for b in range(len(forced)):
            _Chunked(model, c, [prefixes[group[b]]], [forced[b]], [0], [b], take, prefix_logits, pad_id, compact_min).run()
        return
    _Chunked(model, c, prefixes, forced, group, list(range(len(forced))), take, prefix_logits, pad_id, compact_min,
             shared).run()


def _device(model) -> torch.device:
    try:
        return model.get_input_embeddings().weight.device
    except AttributeError:  # a stand-in model without embeddings (tests)
        return torch.device("cpu")


def _reference(model, prefixes, forced, group, take, prefix_logits) -> None:
    """One request per row: its prefix as the prefill, then one cached forward per forced token."""
    from transformers import DynamicCache

    dev = _device(model)
    for b, toks in enumerate(forced):
        pre = list(prefixes[group[b]])
        cache = DynamicCache()
        out = model(input_ids=torch.tensor([pre], device=dev), past_key_values=cache, use_cache=True).logits
        take([b], -len(pre), out) if prefix_logits else take([b], -1, out[:, -1:])
        for j, t in enumerate(toks):
            out = model(input_ids=torch.tensor([[t]], device=dev), past_key_values=cache, use_cache=True).logits
            take([b], j, out)


class _Chunked(Rounds):
    def __init__(self, model, c, prefixes, forced, group, names, take, prefix_logits, pad_id, compact_min, shared=0):
        self.model, self.c, self.take = model, c, take
        self.prefixes, self.forced, self.group, self.names = [list(p) for p in prefixes], [list(f) for f in forced], list(group), names
        self.prefix_logits, self.pad, self.compact_min = prefix_logits, int(pad_id), int(compact_min)
        self.dev = _device(model)
        self.B = len(forced)
        self.N = [len(f) for f in self.forced]
        self.P = [len(self.prefixes[g]) for g in self.group]
        self.j_next = [0] * self.B
        self.pressure = [0] * self.B  # the detector's pressure counter per row (host)
        self.holes = not has_sliding_window(getattr(model, "config", None))
        self.retrace_chunk = 4 * c.detector.W if c is not None and c.detector is not None else None
        self.dynamic = c is not None and c.fixed is None
        if self.dynamic:
            spec = c.spec
            self.m, self.r = int(spec.masking_step), spec.release_step
            self.det = c.detector
            if self.m == 0 and spec.global_build:
                raise ConfigError("strategy.allocation=auto needs every layer's statistics before any mask, so it "
                                  "cannot mask the prefill it traces (masking_step=0); use masking_step >= 1")
        # a common head of the prompts runs once (never under m = 0: its masks are built inside the prefill)
        usable = not prefix_logits and not (self.dynamic and self.m == 0) and len(self.prefixes) > 1
        self.shared = min(int(shared), min(len(p) for p in self.prefixes) - 1) if usable else 0
        if self.shared and any(p[: self.shared] != self.prefixes[0][: self.shared] for p in self.prefixes):
            raise ValueError(f"the prompts do not share their first {self.shared} tokens")

    # ------------------------------------------------------------------ plumbing
    def _forward(self, ids, new_valid, positions, plan: Plan | None, logits_to_keep=0):
        """One forward of the cohort's new tokens (n, T) after the cached columns; returns the logits."""
        self.amask = torch.cat([self.amask, new_valid.long()], dim=1)
        c = self.c
        if c is not None and plan is not None:
            c._forced = plan
        try:
            out = self.model(input_ids=ids, attention_mask=self.amask, position_ids=positions,
                             past_key_values=self.cache, use_cache=True, logits_to_keep=logits_to_keep)
        finally:
            if c is not None:
                c._forced = None
        return out.logits

    def _emit(self, rows: list[int], j0: list[int], logits: torch.Tensor) -> None:
        """take() per set of rows that start at the same forced index."""
        by_start: dict[int, list[int]] = {}
        for i, j in enumerate(j0):
            by_start.setdefault(j, []).append(i)
        for j, idx in by_start.items():
            sel = logits if len(idx) == len(rows) else logits[torch.tensor(idx, device=logits.device)]
            self.take([self.names[rows[i]] for i in idx], j, sel)

    def _chunk(self, rows: list[int], T: int):
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

    def _forward_index(self, rows: list[int], T: int) -> torch.Tensor:
        """Forward index k = j + 1 of each position of the next chunk (n, T), on the host."""
        return torch.tensor([self.j_next[b] for b in rows])[:, None] + 1 + torch.arange(T)[None, :]

    # ------------------------------------------------------------------ the run
    def run(self) -> None:
        from transformers import DynamicCache

        c, G = self.c, len(self.prefixes)
        k = self.shared
        self.cache = DynamicCache()
        self.amask = torch.zeros((1 if k else G, 0), dtype=torch.long, device=self.dev)
        if c is not None:
            self.request0 = c.requests
            c._new_request(1 if k else G)
        if k:  # the prompts' common head: one row, then expanded over the prompts
            ids = torch.tensor([self.prefixes[0][:k]], dtype=torch.long, device=self.dev)
            valid = torch.ones_like(ids, dtype=torch.bool)
            plan = self._prefill_plan(valid, "head") if self.dynamic else (self._fixed_plan(1) if c is not None else None)
            self._forward(ids, valid, torch.arange(k, device=self.dev)[None, :], plan, logits_to_keep=1)
            if self.dynamic:
                self._after_prefill(valid, finished=False)
            elif c is not None:
                c.tokens_seen += valid.sum()
            self._select(torch.zeros(G, dtype=torch.long, device=self.dev))
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
            plan = self._prefill_plan(valid, "tail" if k else "whole") if self.dynamic else self._fixed_plan(G)
        logits = self._forward(ids, valid, positions, plan, logits_to_keep=keep)
        if self.dynamic:
            self._after_prefill(valid, finished=True)
        elif c is not None:
            c.tokens_seen += valid.sum()
        for g in range(G):
            rows = [b for b in range(self.B) if self.group[b] == g]
            if rows:
                one = logits[g : g + 1, : lens[g]] if self.prefix_logits else logits[g : g + 1]
                self.take([self.names[b] for b in rows], -lens[g] if self.prefix_logits else -1, one.expand(len(rows), -1, -1))
        self._select(torch.tensor(self.group, device=self.dev))
        rows = list(range(self.B))
        if not self.dynamic:
            self._rest_in_one(rows)
        else:
            self._rounds()
            c.requests = self.request0 + self.B

    def _select(self, index: torch.Tensor) -> None:
        """Keep (and repeat) rows `index` of the cache, the attention mask and the engine's per-row state."""
        self.cache.batch_select_indices(index)
        self.amask = self.amask.index_select(0, index)
        if self.c is not None:
            self.c.select_rows(index)

    def _fixed_plan(self, n: int) -> Plan:
        c = self.c
        return Plan(prune=ROWS, compact=c.kept_prefix if n == 1 and c.compacted else None)

    def _rest_in_one(self, rows: list[int]) -> None:
        """Strategies without a schedule: every row's forced tokens in one forward."""
        T = max(self.N)
        if T == 0:
            return
        ids, valid, pos = self._chunk(rows, T)
        plan = self._fixed_plan(len(rows)) if self.c is not None else None
        logits = self._forward(ids, valid, pos, plan)
        if self.c is not None:
            self.c.tokens_seen += valid.sum()
        self._emit(rows, [0] * len(rows), logits)

    # ------------------------------------------------------------------ the schedule, chunked
    def _trace_weights(self, live: torch.Tensor, prefill: bool, fresh: bool):
        c = self.c
        w = live.to(torch.float32)
        decay = None
        if c.spec.statistic == "ema":
            d = float(c.spec.ema_decay)
            flags = torch.full((w.shape[0],), fresh, dtype=torch.bool, device=self.dev)
            w, decay = (ema_weights if prefill else sequential_ema_weights)(w, d, flags)
        return w, decay

    def _prefill_plan(self, valid: torch.Tensor, part: str) -> Plan:
        """The prompts' trace: in one forward ("whole"), or a common head and then each prompt's tail. The
        statistics are sums over the prompt's tokens, so two parts give the same totals; the EMA's prefill weights
        d^(n-1-t) / Z_n (n: the prompt's length) are split into the head's d^(k-1-t) and the tail's rescaling."""
        c = self.c
        w, decay = valid.to(torch.float32), None
        if c.spec.statistic == "ema":
            d = float(c.spec.ema_decay)
            if part == "whole":
                w, decay = ema_weights(w, d, torch.ones(w.shape[0], dtype=torch.bool, device=self.dev))
            elif part == "head":
                k = w.shape[1]
                w = torch.pow(torch.tensor(d, device=self.dev), torch.arange(k - 1, -1, -1, device=self.dev, dtype=torch.float32))[None, :]
                decay = torch.zeros(1, device=self.dev)
            else:
                S = w.sum(dim=1, keepdim=True)
                n = S + self.shared
                dd = torch.tensor(d, device=self.dev)
                Z = (1 - torch.pow(dd, n)) / (1 - d)
                j = w.cumsum(dim=1) - 1
                w = torch.pow(dd, (S - 1 - j).clamp_min(0)) * w / Z
                decay = (torch.pow(dd, S) / Z)[:, 0]
        plan = Plan(trace_w=w, decay=decay, align=c.stats.alignment, capture=self.det is not None,
                    drift_trace_w=valid.to(torch.float32) if self.det is not None else None)
        if self.m == 0:  # the published same-pass build: mask the prefill it was traced from
            plan.build_rows = torch.ones(valid.shape[0], dtype=torch.bool, device=self.dev)
            plan.prune = ROWS
        return plan

    def _after_prefill(self, valid: torch.Tensor, finished: bool) -> None:
        """Counting and the detector after the prompts' forward (or their common head's: not finished)."""
        c, G = self.c, valid.shape[0]
        c.tokens_seen += valid.sum()
        c.tokens_traced += valid.sum()
        lens = valid.sum(dim=1).tolist()
        for g in range(G):
            c._count(g, "prefill", int(lens[g]), pruned=self.m == 0)
        if self.det is not None:
            self.det.collect_trace(c.captured, valid.to(torch.float32))
            for g in range(G):
                c.det_count[g] += int(lens[g])
                c.baseline_vectors += int(lens[g])
        if not finished:
            return
        c.fresh = [False] * G
        if self.det is not None:
            done = [c._baseline_ready(g, 0) for g in range(G)]
            if any(done):
                self.det.finalize(c._rows(done))
                for g, flag in enumerate(done):
                    if flag:
                        c.det_done[g] = True
            if all(done):
                self.det.drop_windows()
        if self.m == 0:
            c.has_mask = [True] * G
            c.builds += G
