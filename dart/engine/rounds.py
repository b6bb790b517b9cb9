"""The schedule run in chunks (dart.engine.forcing): rounds over rows in the same phase of their segment, every
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
A row whose window fires at forward f is parked (Chunked.park) with its KV cache (through f, or through f - 1 when
forward f is run again) and its host state; the parked rows re-trace together in the next round (their caches padded
with hidden columns).
"""
from __future__ import annotations

import torch

from dart.engine.plan import ROWS, Plan
from dart.engine.stats import ema_weights


class Rounds:
    def __init__(self, work):
        self.w, self.c, self.det = work, work.c, work.det
        self.retrace_chunk = 4 * self.det.W if self.det is not None else None

    def run(self) -> None:
        w = self.w
        w.prompts()
        rows = list(range(w.B))
        if not w.dynamic:
            self.rest_in_one(rows)
            return
        self.process(rows, first=True)
        while w.parked:
            batch, w.parked = (w.parked, []) if w.holes else (w.parked[:1], w.parked[1:])
            w.restore(batch)
            self.process([p["row"] for p in batch], first=False)

    def rest_in_one(self, rows: list[int]) -> None:
        """Strategies without a schedule: every row's forced tokens in one forward."""
        w, c = self.w, self.c
        T = max(w.N)
        if T == 0:
            return
        ids, valid, pos = w.chunk(rows, T)
        logits = w.forward(ids, valid, pos, w.fixed_plan(len(rows)) if c is not None else None)
        if c is not None:
            c.count(seen=valid.sum())
        w.emit(rows, [0] * len(rows), logits)

    # ------------------------------------------------------------------ one cohort
    def s0(self, rows: list[int]) -> int:
        """The local step of the cohort's next forward (the same for every row of a cohort)."""
        return self.w.j_next[rows[0]] + 1 - self.c.rows[0].origin

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
        T1 = max(0, min(n - s0, max(w.N[b] - w.j_next[b] for b in rows)))  # trace forwards of every layer group
        same_pass = sch.in_layer(row0) and s0 <= n  # a group's statistics start at the build forward
        long_single = (first and len(rows) == 1 and c.spec.execution != "masked"
                       and w.N[rows[0]] - w.j_next[rows[0]] - T1 >= w.compact_min)
        merge = same_pass or (T1 > 0 and not (sch.global_build or long_single))
        if T1 > 0 and not merge:
            self.trace_alone(rows, T1)
            T1 = 0
        if s0 <= n and not merge:
            self.build_between(rows)
        cap = None if first or self.det is None else self.retrace_chunk
        head = True
        while rows:
            T = max(w.N[b] - w.j_next[b] for b in rows)
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
        j_start = [w.j_next[b] for b in rows]
        logits = w.forward(ids, valid, pos, plan)
        w.emit(rows, j_start, logits)
        c.count(seen=valid.sum())
        c.count(traced=valid.sum())
        for i, b in enumerate(rows):
            c.tally.count(c.rows[i], "decode", int(valid_h[i].sum()), pruned=True)
            c.drop_masks(i)
            w.j_next[b] = min(w.j_next[b] + 1, w.N[b])
        go_on = [i for i, b in enumerate(rows) if w.j_next[b] < w.N[b]]
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
        j_start = [w.j_next[b] for b in rows]
        logits = w.forward(ids, valid, pos, plan)
        w.emit(rows, j_start, logits)
        c.count(seen=valid.sum())
        c.count(traced=live.sum())
        for i in range(len(rows)):
            c.tally.count(c.rows[i], "decode", int(valid[i].sum()), pruned=False)
        self.baseline(rows, j_start, valid.cpu(), live)
        for b in rows:
            w.j_next[b] = min(w.j_next[b] + T1, w.N[b])

    def build_between(self, rows: list[int]) -> None:
        """The masks of the rows with tokens left and not released, between forwards."""
        w, c = self.w, self.c
        r = c.spec.release_step
        build = [w.j_next[b] < w.N[b] and (r is None or w.j_next[b] + 1 < r) for b in rows]
        if any(build):
            c.build(c.flags(build))
            c.book.built(build)
        if (len(rows) == 1 and c.rows[0].has_mask and c.spec.execution != "masked"
                and (c.spec.execution == "compact" or w.N[rows[0]] - w.j_next[rows[0]] >= w.compact_min)):
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
        j_start = [w.j_next[b] for b in rows]
        logits = w.forward(ids, valid, pos, plan)
        w.emit(rows, j_start, logits)
        if merge:
            c.book.built(build)
            c.count(traced=traced.sum())
        fired = self.baseline(rows, j_start, valid_h, valid_h & open_h, pruned)
        if sch.timing != "detector":
            fired = self.rule_fires(rows, j_start, pruned)
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
            w.j_next[b] = min(w.j_next[b] + T, w.N[b]) if fired[i] is None else w.j_next[b] + upto[i]
        go_on = [i for i, b in enumerate(rows) if fired[i] is None and w.j_next[b] < w.N[b]]
        for i, b in enumerate(rows):
            if fired[i] is not None and w.j_next[b] < w.N[b]:
                w.park(i, b, T - upto[i], j_start[i] + fired[i] + 1)
        if len(go_on) < n:
            if not go_on:
                return []
            w.select(torch.tensor(go_on, device=w.dev))
        return [rows[i] for i in go_on]

    # ------------------------------------------------------------------ the detector
    def baseline(self, rows, j_start, valid_h, live_h, pruned=None) -> list[int | None]:
        """The detector over one chunk: the baseline's vectors (and its close), then, where `pruned` is given, the
        windows of the pruned columns after the baseline. Returns per row the column whose window fired."""
        c, det, sch = self.c, self.det, self.c.schedule
        n, T = valid_h.shape
        if det is None:
            return [None] * n
        wts = torch.zeros(n, T)
        counts, last = [0] * n, [None] * n
        col = torch.arange(T)
        for i in range(n):
            row = c.rows[i]
            if row.base_done:
                continue
            s0 = j_start[i] + 1 - row.origin
            span = live_h[i] & (col <= sch.baseline_close_col(row, s0)) & (col >= max(row.base_from - s0, 0))
            wts[i] = span.float()
            counts[i] = int(span.sum())
            if counts[i]:
                last[i] = s0 + int(span.nonzero()[-1, 0])
        was_done = [r.base_done for r in c.rows]
        if wts.any():
            c.book.baseline(c.captured, wts.to(self.w.dev), counts, last)
        close = [None if was or not r.base_done else last[i] - (j_start[i] + 1 - r.origin)
                 for i, (was, r) in enumerate(zip(was_done, c.rows))]
        if pruned is None:
            return [None] * n
        start = []
        for i in range(n):  # windows begin after the baseline closed (here, or before this chunk: its first pruned column)
            if not c.rows[i].base_done:
                start.append(None)
            elif close[i] is not None:
                start.append(close[i] + 1)
            else:
                first = pruned[i].nonzero()
                start.append(int(first[0, 0]) if len(first) else None)
        return self.windows(rows, j_start, pruned, start)

    def windows(self, rows, j_start, pruned, start) -> list[int | None]:
        """Windows of W pruned columns from each row's start column; returns the column whose window fired."""
        c, det = self.c, self.det
        W = det.W
        n = len(rows)
        out: list[int | None] = [None] * n
        n_w = []
        for i in range(n):
            if start[i] is None:
                n_w.append(0)
                continue
            run = pruned[i, start[i]:]
            stop = int(run.long().cumprod(0).sum())  # pruned columns are contiguous until a release
            n_w.append(stop // W)
        width = max(n_w) * W
        if width == 0:
            return out
        cols = torch.tensor([[min((start[i] or 0) + x, pruned.shape[1] - 1) for x in range(width)] for i in range(n)],
                            device=self.w.dev)
        v = c.captured.gather(1, cols[..., None].expand(n, width, c.captured.shape[-1]))
        cos = det.window_cosines(v, max(n_w))
        values = torch.cat([cos, det.tau[:, None]], dim=1).tolist()  # one read per chunk
        for i, b in enumerate(rows):
            tau = values[i][-1]
            steps = [j_start[i] + start[i] + (x + 1) * W for x in range(n_w[i])]  # forward closing each window
            request = self.w.request0 + 1 + self.w.names[b]
            for x in range(n_w[i]):  # (inside the cool-down a window closes unchecked: judge gives None)
                c.book.window(i, W)
                if c.book.judge(i, steps[x], values[i][x], tau, request=request, row=0):
                    out[i] = start[i] + (x + 1) * W - 1
                    break
        return out

    def rule_fires(self, rows, j_start, pruned) -> list[int | None]:
        """retrace_at=periodic / random: per row, the pruned column at which the rule fires (the rows' `since` counted
        up to it, or over the whole chunk)."""
        c = self.c
        out: list[int | None] = [None] * len(rows)
        for i, b in enumerate(rows):
            request = self.w.request0 + 1 + self.w.names[b]
            for col in pruned[i].nonzero().flatten().tolist():
                if c.book.tick(i, j_start[i] + col + 1, request, row=0):
                    out[i] = col
                    break
        return out
