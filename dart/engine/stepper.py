"""The token-by-token driver: one Plan per forward, as `model.generate` (or dart.bench.lean) makes them, from the
rules of dart.engine.schedule. Forward 0 is a request's prefill; every later forward one new token per row. It is
the exact reference the chunked driver (dart.engine.forcing) is tested against.

Per forward: `plan(T, valid)` before it (masks built between forwards, compaction, the plan: which rows trace,
prune, feed the detector); `on_signal(v)` when the last monitored layer's attention output is there (the baseline
collects, windows close and are checked; a trigger under strategy.published_quirks resets the row right there, so
the layers after it run the rest of this forward dense and tracing: the plan's late part); `after()` once the
forward is done (counting, the clean re-traces of rows that fired, the next step). The schedule is host-side
Python: which row is in which phase is known without looking at the device, so the hot path never syncs; the
only device reads are at mask builds that compact and at drift checks (one per window).
"""
from __future__ import annotations

import dataclasses

import torch

from dart.engine.plan import ROWS, Plan
from dart.engine.stats import ema_weights
from dart.errors import ConfigError


class Stepper:
    def __init__(self, c):
        self.c = c
        self.key, self.cached = None, None
        self.fired: list[int] = []  # rows whose window fired this forward (clean re-trace after it)
        self.midway: list[int] = []  # rows reset inside this forward (published_quirks)

    def invalidate(self) -> None:
        self.key = None

    def _weights(self, flags: list[bool], fresh: list[bool], T: int, valid):
        """Statistic weights (B, T) and decays of the rows in `flags` (their valid tokens)."""
        c = self.c
        w = c.flags(flags).to(torch.float32)[:, None].expand(c.B, T)
        if valid is not None:
            w = w * valid
        w, decay = w.contiguous(), None
        if c.spec.statistic == "ema":
            w, decay = ema_weights(w, float(c.spec.ema_decay), c.flags(fresh))
        return w, decay

    # ------------------------------------------------------------------ before a forward
    def steady(self, limit: int) -> int:
        """How many of the next forwards (1 to limit) change nothing in the schedule of any row: every row pruned
        under its masks (or all released), none tracing, building or collecting a baseline, no window closing and no
        timing rule or release among them. A driver may feed them as one forward of that many tokens per row
        (Controller.decode_steps: chunked lockstep teacher forcing); the next forward then runs alone."""
        c, sch = self.c, self.c.schedule
        step, k = c.step, int(limit)
        if step == 0 or k <= 1 or sch.timing != "detector":
            return 1
        if sch.released(step):
            return k
        if sch.r is not None:
            k = min(k, int(sch.r) - step)
        for r in c.rows:
            s = step - r.origin
            if (not sch.pruned(r, s, step) or sch.builds_now(r, s) or sch.collects(r, s)
                    or sch.traces(r, s, True) or sch.traces(r, s, False)):
                return 1
            if sch.W is not None:  # the forward that closes a window runs alone (a check may reset the row in it)
                k = min(k, sch.W - 1 - r.window)
        return max(k, 1)

    def plan(self, T: int, valid: torch.Tensor | None) -> Plan:
        """The Plan of the next forward of T tokens per row: one decode step (or the prefill), or, inside
        Controller.decode_steps, c.steps = T decode steps in which nothing changes (Stepper.steady)."""
        c, sch = self.c, self.c.schedule
        steps = c.steps
        if steps > 1 and (steps != T or self.steady(steps) < steps):
            raise RuntimeError(f"{steps} decode steps in one forward of {T} tokens, but the schedule changes within them")
        rows, B, step = c.rows, c.B, c.step
        released = sch.released(step)
        s = [step - r.origin for r in rows]
        live = not released
        tr = {g: [live and sch.traces(r, s[b], g) for b, r in enumerate(rows)] for g in (True, False)}
        fresh = {g: [sch.fresh(r, s[b], g) for b, r in enumerate(rows)] for g in (True, False)}
        building = [live and sch.builds_now(r, s[b]) for b, r in enumerate(rows)]
        inlayer = [building[b] and sch.in_layer(r) for b, r in enumerate(rows)]
        baseline = [live and sch.collects(r, s[b]) for b, r in enumerate(rows)]
        self.tokens = valid.sum(dim=1).long().tolist() if step == 0 and valid is not None else [T] * B
        between = [building[b] and not inlayer[b] for b in range(B)]
        if any(between):
            c.build(c.flags(between))
            c.book.built(between)
        if any(inlayer) and sch.global_build and not any(sch.group_builds(rows[b], g) for b in range(B) if inlayer[b]
                                                         for g in (True, False)):
            raise ConfigError("strategy.allocation=auto needs every layer's statistics before any mask, so it cannot "
                              "mask the prefill it traces (masking_step=0) during generation; use masking_step >= 1")
        masked = [live and sch.pruned(r, s[b], step) for b, r in enumerate(rows)]
        windows = [live and sch.windows(r, s[b], step) for b, r in enumerate(rows)]
        closing = sch.midway and any(w and rows[b].window + 1 == sch.W for b, w in enumerate(windows))
        c.maybe_compact()
        key = (T, tuple(tr[True]), tuple(tr[False]), tuple(masked), tuple(inlayer), tuple(baseline), tuple(windows),
               released, c.compacted, valid is None, closing)
        if key == self.key and not any(tr[True]) and not any(tr[False]) and not any(inlayer) and not any(baseline):
            plan = self.cached  # steady decoding: nothing changed, no new tensors
        else:
            builds = {g: [f and sch.group_builds(rows[b], g) for b, f in enumerate(inlayer)] for g in (True, False)}
            plan = self._group(T, valid, tr[True], fresh[True], builds[True])
            if (tr[True], fresh[True], builds[True]) != (tr[False], fresh[False], builds[False]):
                plan.late, plan.split = self._group(T, valid, tr[False], fresh[False], builds[False]), sch.split
            if any(baseline):
                w = c.flags(baseline).to(torch.float32)[:, None].expand(B, T)
                plan.drift_trace_w = (w * valid if valid is not None else w).contiguous()
            if any(masked) or any(inlayer):
                plan.prune = ROWS
                if plan.late is not None:
                    plan.late.prune = ROWS
            if any(windows):
                plan.drift_decode_rows = c.flags(windows)
            plan.closing = closing
            if c.compacted and all(masked):  # one sequence's kept prefix, or a batch's union (dart.engine.union)
                plan.compact, plan.compact_rows = c.kept_prefix, c.union.rows_differ()
            self.key, self.cached = key, plan
        traced = [tr[True][b] or tr[False][b] for b in range(B)]
        if any(traced):
            c.count(traced=float(sum(n for n, t in zip(self.tokens, traced) if t)))
        self.inlayer_builds = sum(f and any(sch.group_builds(rows[b], g) for g in (True, False)) for b, f in enumerate(inlayer))
        c.count(seen=float(B * T) if valid is None else valid.sum())
        self.pruned_now = [masked[b] or inlayer[b] for b in range(B)]
        self.masked = masked
        self.inlayer, self.baseline, self.windows, self.s, self.T = inlayer, baseline, windows, s, T
        self.fired, self.midway = [], []
        if T == steps:  # FFN weight bytes a generated token reads (a compacted prefix reads only its neurons)
            c.tally.generated(sum(plan.compact) if plan.compact is not None else c.L * c.I, B, steps)
        return plan

    def _group(self, T, valid, traced, fresh, builds) -> Plan:
        c = self.c
        p = Plan()
        if any(traced):
            p.trace_w, p.decay = self._weights(traced, fresh, T, valid)
            p.align = c.stats.alignment
        if any(builds):
            p.build_rows = c.flags(builds)
        return p

    # ------------------------------------------------------------------ inside a forward: the drift signal
    def on_signal(self, v: torch.Tensor, p: Plan) -> Plan:
        """The drift signal v of the running forward (plan p): baselines, windows, checks. Returns the plan the rest
        of the forward runs (a mid-forward re-trace, published_quirks, changes its late layers)."""
        c = self.c
        if p.drift_trace_w is not None:
            c.book.baseline(v, p.drift_trace_w, [n if f else 0 for n, f in zip(self.tokens, self.baseline)],
                            [s if f else None for s, f in zip(self.s, self.baseline)])
        if p.drift_decode_rows is not None:
            c.detector.collect_decode(v, p.drift_decode_rows, c.steps)
            due = [bool(f) and c.book.window(b, c.steps) > 0 for b, f in enumerate(self.windows)]
            if any(due):
                p = self._check(due, p)
        return p

    def _check(self, due: list[bool], p: Plan) -> Plan:
        c, sch, det = self.c, self.c.schedule, self.c.detector
        step = c.step
        cooling = [d and not sch.checked(c.rows[b], step) for b, d in enumerate(due)]
        if any(cooling):  # windows inside the cool-down close unchecked
            det.discard(c.flags(cooling))
            due = [d and not k for d, k in zip(due, cooling)]
            if not any(due):
                return p
        cos = det.close_window(c.flags(due))
        values = torch.stack([cos, det.tau]).tolist()  # one read per window
        for b, flag in enumerate(due):
            if flag and c.book.judge(b, step, values[0][b], values[1][b], request=c.counts.requests, row=b):
                (self.midway if sch.midway else self.fired).append(b)
        return self._reset_midway(p) if self.midway else p

    def _reset_midway(self, p: Plan) -> Plan:
        """published_quirks: the rows that fired start their new segment inside this forward: from the split layer
        on they run it dense and trace it (fresh statistics), the layers before it already ran it pruned."""
        c, sch = self.c, self.c.schedule
        split = slice(sch.split, c.L)
        for b in self.midway:
            c.drop_masks(b, split)
            c.restart_row(b)
            c.book.retrace(b, c.step)
        flags = [b in self.midway for b in range(c.B)]
        late = dataclasses.replace(p.late if p.late is not None else p, compact=None, build_rows=None, late=None,
                                   _on={})
        T = self.T
        old = late.trace_w if late.trace_w is not None else torch.zeros(c.B, T, device=c.device)
        w, decay = self._weights(flags, flags, T, None)
        late.trace_w = torch.where(c.flags(flags)[:, None], w, old)
        if decay is not None:
            late.decay = torch.where(c.flags(flags), decay, late.decay if late.decay is not None else torch.ones_like(decay))
        late.align = c.stats.alignment
        self.invalidate()
        return dataclasses.replace(p, late=late, split=sch.split, _on={})

    # ------------------------------------------------------------------ after a forward
    def after(self) -> None:
        c, sch = self.c, self.c.schedule
        c.book.built(self.inlayer, builds=self.inlayer_builds)
        kind = "prefill" if c.step == 0 else "decode"
        for b, row in enumerate(c.rows):
            c.tally.count(row, kind, self.tokens[b], self.pruned_now[b])
        if sch.timing != "detector":  # the timing controls: after each pruned forward, their rule
            for b in range(c.B):
                if self.masked[b] and c.book.tick(b, c.step, c.counts.requests, row=b):
                    self.fired.append(b)
        for b in self.midway:  # the rest of the new segment's re-trace runs dense in every layer
            c.drop_masks(b)
        for b in self.fired:  # a clean re-trace from the next forward on (or, on_retrace=dense, a dense hold)
            if sch.action == "remask":
                c.drop_masks(b)
                c.restart_row(b)
            else:
                self.invalidate()
            c.book.retrace(b, c.step)

