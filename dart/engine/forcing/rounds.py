"""The chunked driver (step 2 of dart.engine.forcing): rounds over rows in the same phase of their segment, every
decision taken from the rules of dart.engine.schedule.

A round takes a cohort of rows whose segments started together (every row right after the prompts, or rows that
re-trace after a trigger), with their KV cache and engine state in place, and runs, in as few forwards as the
schedule allows:
- a mid-forward re-trace (strategy.published_quirks) first runs the trigger forward again, alone: the layers before
  the monitored one under the old masks, the others dense and tracing (the new segment's local step 0);
- the trace forwards (masking_step - 1 after the prompt, the re-trace length after a trigger), dense, and the masks,
  built inside the same forward as the first pruned chunk (each layer's masks from its traced positions, which run
  dense; a layer whose statistics start at the build forward traces and masks it in the same pass) unless the masks
  need every layer's statistics (allocation=auto) or a single long row gains more from compaction (then: a trace
  forward, the masks between forwards, and a compacted chunk);
- pruned chunks: the first round's in one forward to the end; after a trigger of `retrace_chunk` pruned tokens past
  the detector's baseline, doubling, so that a row that fires again soon wastes little;
- the detector as the token-by-token driver runs it: the baseline collects the monitored vectors of the segment, later
  pruned tokens close a window every W, checked against the baseline (not inside the cool-down after a trigger) with
  the row's pressure counter (Schedule.press); chunks end on window boundaries.
A row whose window fires at forward f is parked (Rounds.park) with its KV cache (through f, or through f - 1 when
forward f is run again) and its host state; the parked rows re-trace together in the next round (their caches padded
with hidden columns).
"""
from __future__ import annotations

import torch

from dart.engine.forcing.batch import Batch
from dart.engine.forcing.checks import Checks
from dart.engine.forcing.prompts import Prompts, fixed_plan
from dart.engine.masks import put_row_masks, row_masks
from dart.engine.plan import ROWS, Plan
from dart.engine.stats import ema_weights
from dart.errors import ConfigError


class Rounds:
    """The chunked driver of one force() call: the prompts' forward, then rounds of cohorts until no row is parked."""

    def __init__(self, model, c, prefixes, forced, group, names, take, prefix_logits, pad_id, compact_min, shared=0):
        self.c = c
        self.w = Batch(model, c, prefixes, forced, group, names, take, prefix_logits, pad_id)
        self.det = c.detector if c is not None else None
        self.dynamic = c is not None and c.fixed is None
        self.m = int(c.spec.masking_step) if self.dynamic else None
        if self.dynamic and self.m == 0 and c.spec.global_build:
            raise ConfigError("strategy.allocation=auto needs every layer's statistics before any mask, so it cannot "
                              "mask the prefill it traces (masking_step=0); use masking_step >= 1")
        # a common head of the prompts runs once (never under m = 0: its masks are built inside the prefill)
        pre = self.w.prefixes
        usable = not prefix_logits and not (self.dynamic and self.m == 0) and len(pre) > 1
        self.shared = min(int(shared), min(len(p) for p in pre) - 1) if usable else 0
        if self.shared and any(p[: self.shared] != pre[0][: self.shared] for p in pre):
            raise ValueError(f"the prompts do not share their first {self.shared} tokens")
        self.compact_min = int(compact_min)
        self.request0 = c.counts.requests if c is not None else 0  # the chunk logs number rows from here
        self.parked: list[dict] = []  # rows that fired, waiting for their re-trace round
        self.retrace_chunk = 4 * self.det.W if self.det is not None else None
        self.checks = Checks(self.c, self.w, self.request0)

    def run(self) -> None:
        w = self.w
        Prompts(w, self.c, self.dynamic, self.m, self.shared).run()
        rows = list(range(w.B))
        if not self.dynamic:
            self.rest_in_one(rows)
            return
        self.process(rows, first=True)
        while self.parked:
            batch, self.parked = (self.parked, []) if w.holes else (self.parked[:1], self.parked[1:])
            self.restore(batch)
            self.process([p["row"] for p in batch], first=False)

    def rest_in_one(self, rows: list[int]) -> None:
        """Strategies without a schedule: every row's forced tokens in one forward."""
        w, c = self.w, self.c
        T = max(w.N)
        if T == 0:
            return
        ids, valid, pos = w.chunk(rows, T)
        logits = w.forward(ids, valid, pos, fixed_plan(c, len(rows)) if c is not None else None)
        if c is not None:
            c.count(seen=valid.sum())
        w.emit(rows, [0] * len(rows), logits)

    # ------------------------------------------------------------------ one cohort
    def s0(self, rows: list[int]) -> int:
        """The local step of the cohort's next forward (the same for every row of a cohort)."""
        return self.w.at[rows[0]] + 1 - self.c.rows[0].origin

    def process(self, rows: list[int], first: bool) -> None:
        w, c, sch = self.w, self.c, self.c.schedule
        row0 = c.rows[0]
        s0 = self.s0(rows)
        if s0 < row0.early_from:  # a mid-forward re-trace: its trigger forward first, alone
            rows = self.head(rows)
            if not rows:
                return
            s0 += 1
        n = row0.n
        T1 = max(0, min(n - s0, max(w.left(b) for b in rows)))  # trace forwards of every layer group
        same_pass = sch.in_layer(row0) and s0 <= n  # a group's statistics start at the build forward
        long_single = (first and len(rows) == 1 and c.spec.execution != "masked"
                       and w.left(rows[0]) - T1 >= self.compact_min)
        merge = same_pass or (T1 > 0 and not (sch.global_build or long_single))
        if T1 > 0 and not merge:
            self.trace_alone(rows, T1)
            T1 = 0
        if s0 <= n and not merge:
            self.build_between(rows)
        cap = None if first or self.det is None else self.retrace_chunk
        head = True
        while rows:
            T = max(w.left(b) for b in rows)
            if T <= 0:
                return
            if cap is not None:
                # the first chunk ends `cap` tokens after the baseline closes (the same column for the cohort),
                # later ones hold `cap` tokens: every chunk ends on a window boundary
                T = min(T, sch.baseline_close_col(c.rows[0], self.s0(rows)) + 1 + cap if head else cap)
                cap *= 2
            rows = self.chunk_forward(rows, T1, T, merge)
            T1, merge, head = 0, False, False

    def trace_weights(self, live: torch.Tensor, early: bool, s_first: int):
        """Statistic weights (n, T) and decays of a group's traced positions, its first traced column at s_first."""
        c = self.c
        w, decay = live.to(torch.float32), None
        if c.spec.statistic == "ema":
            fresh = c.schedule.fresh(c.rows[0], s_first, early)
            flags = torch.full((w.shape[0],), fresh, dtype=torch.bool, device=self.w.dev)
            w, decay = ema_weights(w, float(c.spec.ema_decay), flags, group=1)  # one forward per token
        return w, decay

    def trace_plan(self, early: torch.Tensor, late: torch.Tensor, s_first: int) -> Plan:
        """A forward whose positions `early` / `late` (n, T) bool trace the layer groups before / from the split."""
        c, sch = self.c, self.c.schedule
        dev = self.w.dev
        we, de = self.trace_weights(early.to(dev), True, s_first)
        plan = Plan(trace_w=we, decay=de, align=c.stats.alignment, capture=self.det is not None)
        same = torch.equal(early, late) and sch.fresh(c.rows[0], s_first, True) == sch.fresh(c.rows[0], s_first, False)
        if not same:
            wl, dl = self.trace_weights(late.to(dev), False, s_first)
            plan.late = Plan(trace_w=wl if late.any() else None, decay=dl if late.any() else None,
                             align=c.stats.alignment and bool(late.any()))
            plan.split = sch.split
        return plan

    def head(self, rows: list[int]) -> list[int]:
        """Forward f again for rows that fired at f under published_quirks: the layers before the split under the old
        masks (restored with the park), the others dense and tracing from zero; then every layer dense."""
        w, c, sch = self.w, self.c, self.c.schedule
        ids, valid, pos = w.chunk(rows, 1)
        split = slice(sch.split, c.L)
        for i in range(len(rows)):
            c.drop_masks(i, split)
        valid_h = valid.cpu()
        plan = self.trace_plan(torch.zeros_like(valid_h), valid_h, 0)
        plan.prune = valid
        plan.late.prune = None
        j_start = [w.at[b] for b in rows]
        logits = w.forward(ids, valid, pos, plan)
        w.emit(rows, j_start, logits)
        c.count(seen=valid.sum())
        c.count(traced=valid.sum())
        for i, b in enumerate(rows):
            c.tally.count(c.rows[i], "decode", int(valid_h[i].sum()), pruned=True)
            c.drop_masks(i)
            w.advance(b, 1)
        go_on = [i for i, b in enumerate(rows) if w.left(b)]
        if len(go_on) < len(rows) and go_on:
            w.select(torch.tensor(go_on, device=w.dev))
        return [rows[i] for i in go_on]

    def trace_alone(self, rows: list[int], T1: int) -> None:
        """The trace forwards of every row as one dense forward (the masks are built after it)."""
        w, c = self.w, self.c
        ids, valid, pos = w.chunk(rows, T1)
        k = w.forward_index(rows, T1)
        r = c.spec.release_step
        live = valid.cpu() & ((k < int(r)) if r is not None else True)
        s_first = self.s0(rows)
        plan = self.trace_plan(live, live, s_first)
        j_start = [w.at[b] for b in rows]
        logits = w.forward(ids, valid, pos, plan)
        w.emit(rows, j_start, logits)
        c.count(seen=valid.sum())
        c.count(traced=live.sum())
        for i in range(len(rows)):
            c.tally.count(c.rows[i], "decode", int(valid[i].sum()), pruned=False)
        self.checks.baseline(rows, j_start, valid.cpu(), live)
        for b in rows:
            w.advance(b, T1)

    def build_between(self, rows: list[int]) -> None:
        """The masks of the rows with tokens left and not released, between forwards."""
        w, c = self.w, self.c
        r = c.spec.release_step
        build = [w.left(b) > 0 and (r is None or w.at[b] + 1 < r) for b in rows]
        if any(build):
            c.build(c.flags(build))
            c.book.built(build)
        if (len(rows) == 1 and c.rows[0].has_mask and c.spec.execution != "masked"
                and (c.spec.execution == "compact" or w.left(rows[0]) >= self.compact_min)):
            c.maybe_compact()
        c.compaction_done()

    # ------------------------------------------------------------------ one forward
    def chunk_forward(self, rows: list[int], T1: int, T: int, merge: bool) -> list[int]:
        """T1 trace columns (a merged round) then pruned columns, up to T per row. Checks the drift windows, parks the
        rows that fired, drops the finished ones; returns the rows that go on."""
        w, c, sch = self.w, self.c, self.c.schedule
        n = len(rows)
        ids, valid, pos = w.chunk(rows, T)
        k = w.forward_index(rows, T)
        col = torch.arange(T)[None, :]
        valid_h = valid.cpu()
        r = c.spec.release_step
        open_h = (k < int(r)) if r is not None else torch.ones_like(valid_h)
        row0 = c.rows[0]
        if merge:
            s_first = self.s0(rows)
            live = valid_h & open_h
            same = {g: sch.first(row0, g) == row0.n for g in (True, False)}  # traces the build column too
            trace = {g: live & ((col < T1) | ((col == T1) & same[g])) for g in (True, False)}
            plan = self.trace_plan(trace[True], trace[False], s_first)
            build = [bool(live[i, T1:].any()) for i in range(n)]
            pruned = live & torch.tensor(build)[:, None] & (col >= T1)
            traced = trace[True] | trace[False]
            for i in range(n):  # the trace tokens come before the masks: the budget counts them first
                c.tally.count(c.rows[i], "decode", int((traced[i] & ~pruned[i]).sum()), pruned=False)
            for g, p in ((True, plan), (False, plan.late)):
                if p is not None:
                    flags = [f and sch.group_builds(c.rows[i], g) for i, f in enumerate(build)]
                    p.build_rows = c.flags(flags) if any(flags) else None
                    p.prune = pruned.to(w.dev)
            plan.capture = self.det is not None
        else:
            traced = torch.zeros_like(valid_h)
            plan = Plan(capture=self.det is not None)
            hold = torch.tensor([-1 if r.hold_until is None else r.hold_until for r in c.rows])[:, None]
            pruned = valid_h & open_h & torch.tensor(c.has_mask)[:, None] & (k > hold)  # (a dense hold runs dense)
            plan.prune = pruned.to(w.dev)
            if n == 1 and c.compacted and c.rows[0].has_mask and bool((pruned | ~valid_h).all()):
                plan.prune, plan.compact = ROWS, c.kept_prefix
        j_start = [w.at[b] for b in rows]
        logits = w.forward(ids, valid, pos, plan)
        w.emit(rows, j_start, logits)
        if merge:
            c.book.built(build)
            c.count(traced=traced.sum())
        fired = self.checks.baseline(rows, j_start, valid_h, valid_h & open_h, pruned)
        if sch.timing != "detector":
            fired = self.checks.rule_fires(rows, j_start, pruned)
        # counting, up to each row's trigger (its later tokens are recomputed; under published_quirks the trigger
        # forward itself too)
        again = 1 if sch.midway else 0
        upto = [T if f is None else f + 1 - again for f in fired]
        for i in range(n):
            u = upto[i]
            c.tally.count(c.rows[i], "decode", int(pruned[i, :u].sum()), pruned=True)
            c.tally.count(c.rows[i], "decode", int((valid_h[i, :u] & ~pruned[i, :u] & ~traced[i, :u]).sum()), pruned=False)
            c.count(seen=float(valid_h[i, :u].sum()))
        for i, b in enumerate(rows):
            w.advance(b, T if fired[i] is None else upto[i])
        go_on = [i for i, b in enumerate(rows) if fired[i] is None and w.left(b)]
        for i, b in enumerate(rows):
            if fired[i] is not None and w.left(b):
                self.park(i, b, T - upto[i], j_start[i] + fired[i] + 1)
        if len(go_on) < n:
            if not go_on:
                return []
            w.select(torch.tensor(go_on, device=w.dev))
        return [rows[i] for i in go_on]

    # ------------------------------------------------------------------ parked rows
    def park(self, i: int, b: int, drop: int, t: int) -> None:
        """Keep row b (cohort index i) for its re-trace round: its KV cache up to its trigger at forward t (the last
        `drop` columns are after it), its state for the segment it starts (Schedule.retrace) and, under
        published_quirks or on_retrace=dense, its old masks, which it runs again with."""
        c = self.c
        c.tally.fold(c.rows, [i])
        state = c.rows[i].copy()
        c.schedule.retrace(state, t)
        park = {"row": b, "state": state, **self.w.keep(i, drop)}
        if c.schedule.midway or c.schedule.action == "dense":  # the masks it runs again with
            park["masks"] = row_masks(c, i)
        self.parked.append(park)

    def restore(self, batch: list[dict]) -> None:
        """The cache, attention mask and engine state of parked rows."""
        c = self.c
        self.w.restore(batch)
        c.reset_rows(len(batch))
        c.restore_rows([p["state"] for p in batch])
        for i, p in enumerate(batch):
            if "masks" in p:
                put_row_masks(c, i, p["masks"])
