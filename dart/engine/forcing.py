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


class _Chunked:
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
        c, G = self.c, valid.shape[0]
        c.tokens_seen += valid.sum()
        c.tokens_traced += valid.sum()
        if self.det is not None:
            self.det.collect_trace(c.captured, valid.to(torch.float32))
        if not finished:
            return
        c.fresh = [False] * G
        if self.det is not None and max(self.m, 1) == 1:
            self.det.finalize(torch.ones(G, dtype=torch.bool, device=self.dev))
            self.det.drop_windows()
        if self.m == 0:
            c.has_mask = [True] * G
            c.builds += G

    # ------------------------------------------------------------------ rounds
    def _rounds(self) -> None:
        """The first round over every row (in phase after the prefill), then re-trace rounds of the parked rows."""
        self.parked: list[dict] = []
        self._process(list(range(self.B)), first=True)
        while self.parked:
            batch = [self.parked.pop(0)] if not self.holes else self.parked
            if self.holes:
                self.parked = []
            self._restore(batch)
            self._process([p["row"] for p in batch], first=False)

    def _process(self, rows: list[int], first: bool) -> None:
        """Trace, build and prune a cohort (rows in the same phase, their cache and engine state in place) until
        every row is done or parked at a trigger. The trace forwards and the first pruned chunk are one forward
        (each layer's masks built inside it from the traced positions, which run dense), unless the masks need
        every layer's statistics (allocation=auto) or a single row gains more from compaction."""
        c, m, det = self.c, self.m, self.det
        t = self._t = max(m, 1) - 1 if first else max(m, 1)
        T1 = max(0, min(t, max(self.N[b] - self.j_next[b] for b in rows)))
        long_single = (len(rows) == 1 and c.spec.execution != "masked"
                       and self.N[rows[0]] - self.j_next[rows[0]] - T1 >= self.compact_min)
        merge = T1 > 0 and (m == 0 or not (c.spec.global_build or long_single))
        if T1 > 0 and not merge:
            self._trace_alone(rows, T1, first)
            T1 = 0
        if m >= 1 and not merge:
            self._build(rows)
        cap = None if first else self.retrace_chunk
        while rows:
            left = max(self.N[b] - self.j_next[b] for b in rows) - T1
            if left <= 0 and T1 == 0:
                return
            Tm = max(left, 0)
            if cap is not None and det is not None and Tm > cap:
                Tm = cap
            rows = self._chunk_forward(rows, T1, Tm, first, merge)
            T1, merge = 0, False
            if cap is not None:
                cap *= 2

    def _trace_alone(self, rows: list[int], T1: int, first: bool) -> None:
        """The trace forwards of every row as one dense forward (the masks are built after it)."""
        c = self.c
        ids, valid, pos = self._chunk(rows, T1)
        k = self._forward_index(rows, T1).to(self.dev)
        live = valid & (k < self.r) if self.r is not None else valid
        plan = self._trace_plan(live, T1, first)
        logits = self._forward(ids, valid, pos, plan)
        self._emit(rows, [self.j_next[b] for b in rows], logits)
        c.tokens_seen += valid.sum()
        self._after_trace(rows, live, T1, self._t)
        for b in rows:
            self.j_next[b] = min(self.j_next[b] + T1, self.N[b])

    def _trace_plan(self, live: torch.Tensor, t: int, first: bool) -> Plan:
        """Trace weights for the first `t` columns' live positions of a chunk (the rest: not traced)."""
        c = self.c
        mask = live.clone()
        mask[:, t:] = False
        w, decay = self._trace_weights(mask, prefill=False, fresh=not first)
        return Plan(trace_w=w, decay=decay, align=c.stats.alignment, capture=self.det is not None,
                    drift_trace_w=mask.to(torch.float32) if self.det is not None else None)

    def _after_trace(self, rows: list[int], live: torch.Tensor, t_cols: int, t: int) -> None:
        """Statistics bookkeeping and the detector's baseline after a forward whose first t_cols columns traced."""
        c, det = self.c, self.det
        traced = live[:, :t_cols]
        n_live = traced.sum(dim=1).tolist()
        c.tokens_traced += traced.sum()
        for i in range(len(rows)):
            if n_live[i]:
                c.fresh[i] = False
        if det is not None:
            w = torch.zeros(live.shape, dtype=torch.float32, device=self.dev)
            w[:, :t_cols] = traced.to(torch.float32)
            det.collect_trace(c.captured, w)
            done = [x == t for x in n_live]
            if any(done):
                det.finalize(c._rows(done))
            det.drop_windows()

    def _build(self, rows: list[int]) -> None:
        """The masks of the rows with tokens left and not released (forward m after the (re)start), between forwards."""
        c, r = self.c, self.r
        build = [self.j_next[b] < self.N[b] and (r is None or self.j_next[b] + 1 < r) for b in rows]
        if any(build):
            c._build(c._rows(build))
            c.builds += sum(build)
            for i, flag in enumerate(build):
                if flag:
                    c.has_mask[i] = True
        n = len(rows)
        if (n == 1 and c.has_mask[0] and c.spec.execution != "masked"
                and (c.spec.execution == "compact" or self.N[rows[0]] - self.j_next[rows[0]] >= self.compact_min)):
            c._maybe_compact()
        c._pending_compact = False

    def _chunk_forward(self, rows: list[int], T1: int, Tm: int, first: bool, merge: bool) -> list[int]:
        """One forward: T1 trace columns (merged rounds) then Tm pruned columns of every row. Checks the drift
        windows, parks the rows that fired, drops the finished ones; returns the rows that go on."""
        c, m, r, det = self.c, self.m, self.r, self.det
        n, T = len(rows), T1 + Tm
        ids, valid, pos = self._chunk(rows, T)
        k_host = self._forward_index(rows, T)
        col = torch.arange(T)[None, :]
        valid_host = valid.cpu()
        open_host = (k_host < r) if r is not None else torch.ones_like(valid_host)
        if merge:
            live = (valid_host & open_host & (col < T1)).to(self.dev)
            plan = self._trace_plan(live, T1, first)
            has_tokens = [bool(valid_host[i, T1:].any()) if m >= 1 else bool(live[i, 0]) for i in range(n)]
            build = [has_tokens[i] and bool(open_host[i, T1 if m >= 1 else 0]) for i in range(n)]
            plan.build_rows = c._rows(build)
            c.builds += sum(build)
            masked = torch.tensor(build)[:, None]
            pruned_host = valid_host & open_host & masked & ((col >= T1) if m >= 1 else True)
        else:
            plan = Plan(capture=det is not None)
            pruned_host = valid_host & open_host & torch.tensor(c.has_mask)[:, None] & (col >= T1)
        plan.prune = pruned_host.to(self.dev)
        if (not merge and n == 1 and c.compacted and c.has_mask[0] and T1 == 0
                and bool((pruned_host | ~valid_host).all())):
            plan.prune, plan.compact = ROWS, c.kept_prefix
        j_start = [self.j_next[b] for b in rows]
        logits = self._forward(ids, valid, pos, plan)
        self._emit(rows, j_start, logits)
        if merge:
            for i, flag in enumerate(build):
                if flag:
                    c.has_mask[i] = True
            self._after_trace(rows, live, T1, self._t)
        # drift windows over each row's pruned columns after the trace columns
        n_pruned = pruned_host[:, T1:].sum(dim=1).tolist() if T1 else pruned_host.sum(dim=1).tolist()
        fired = self._scan(rows, j_start, T1, n_pruned) if det is not None else [None] * n
        n_valid = valid_host.sum(dim=1).tolist()
        c.tokens_seen += float(sum(nv if f is None else f + 1 for nv, f in zip(n_valid, fired)))
        for i, b in enumerate(rows):
            self.j_next[b] = min(self.j_next[b] + T, self.N[b]) if fired[i] is None else self.j_next[b] + fired[i] + 1
        go_on = [i for i, b in enumerate(rows) if fired[i] is None and self.j_next[b] < self.N[b]]
        for i, b in enumerate(rows):
            if fired[i] is not None and self.j_next[b] < self.N[b]:
                self._park(i, b, T - fired[i] - 1)
        if len(go_on) < n:
            if not go_on:
                return []
            self._select(torch.tensor(go_on, device=self.dev))
        return [rows[i] for i in go_on]

    def _scan(self, rows: list[int], j_start: list[int], T1: int, n_pruned: list[int]) -> list[int | None]:
        """The drift checks of a chunk's pruned columns (from column T1): per row the chunk column of the token
        whose window fired, or None. Windows continue the row's segment (chunks hold whole windows) and its
        pressure counter."""
        c, det, W = self.c, self.det, self.det.W
        n_w = [x // W for x in n_pruned]
        out: list[int | None] = [None] * len(rows)
        if max(n_w) == 0:
            return out
        cos = det.window_cosines(c.captured[:, T1:], max(n_w))
        values = torch.cat([cos, det.tau[:, None]], dim=1).tolist()  # one read per chunk
        for i, b in enumerate(rows):
            tau = values[i][-1]
            steps = [j_start[i] + T1 + (w + 1) * W for w in range(n_w[i])]  # forward index closing each window
            if det.fire_steps is not None:
                below = [s in det.fire_steps for s in steps]
            else:
                below = [values[i][w] < tau for w in range(n_w[i])]  # NaN tau never fires
            hit, self.pressure[b] = det.scan_pressure(below, self.pressure[b])
            last = n_w[i] - 1 if hit is None else hit
            request = self.request0 + 1 + self.names[b]
            for w in range(last + 1):
                entry = {"request": request, "row": 0, "step": steps[w], "cosine": values[i][w], "threshold": tau}
                c.window_log.append(entry)
                if w == hit:
                    c.triggers.append(entry)
            c.checks += last + 1
            if hit is not None:
                out[i] = T1 + (hit + 1) * W - 1
        return out

    # ------------------------------------------------------------------ parked rows (re-trace after a trigger)
    def _park(self, i: int, b: int, drop: int) -> None:
        """Keep row b's KV cache up to its trigger (the last `drop` columns are after it) for a later round."""
        cols = self.amask.shape[1] - drop
        kv = [(layer.keys[i : i + 1, :, :cols], layer.values[i : i + 1, :, :cols]) for layer in self.cache.layers]
        self.parked.append({"row": b, "kv": kv, "amask": self.amask[i : i + 1, :cols]})
        self.pressure[b] = 0

    def _restore(self, batch: list[dict]) -> None:
        """The cache, attention mask and fresh engine state of parked rows (shorter caches padded with hidden
        columns on the right)."""
        from transformers import DynamicCache

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
        self.c._reset_rows(len(batch))
