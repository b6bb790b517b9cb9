"""The schedule's bookkeeping, written once: what the rules of dart.engine.schedule do to the rows, the drift detector
and the run's counters once a driver has run forwards. Every driver (token by token: dart.engine.stepper; in chunks:
dart.engine.forcing; in one pass: dart.engine.onepass) decides what a forward runs and then reports here what it ran;
no driver changes a row itself.

    built      rows that got their segment's masks: they hold a mask from now on; the builds counted
    baseline   monitored vectors join the rows' baselines (counted); a row whose baseline is due closes it (its
               centre and threshold set, its windows start); the detector's trace buffer goes once no row collects
    window     pruned vectors join a row's decode windows; returns how many windows they closed
    judge      one closed window: inside the cool-down it closes unchecked; else it is logged, counted and pressed
               (Schedule.press), and a trigger is logged
    tick       the timing controls (retrace_at=periodic / random): one pruned forward of a row, and whether it fires
Rows are indexed by their place in the controller's batch (`b`); `request` and `row` name them in the logs (a chunked
run logs each continuation as a request of its own).
"""
from __future__ import annotations

from typing import Sequence

import torch


class Bookkeeping:
    def __init__(self, c):
        self.c = c

    def built(self, flags: Sequence[bool], builds: int | None = None) -> None:
        """Rows `flags` hold their segment's masks from now on; `builds` mask builds counted (default: one a row)."""
        rows = self.c.rows
        for b, flag in enumerate(flags):
            if flag:
                rows[b].has_mask = True
        self.c.count(builds=sum(bool(f) for f in flags) if builds is None else builds)

    # ------------------------------------------------------------------ the detector's baseline
    def baseline(self, v: torch.Tensor, weights: torch.Tensor, counts: Sequence[int], last: Sequence[int | None]) -> None:
        """The monitored vectors v (B, T, D) with weights (B, T) join the baselines: counts[b] vectors of row b, the
        last of them at local step last[b] (None: the baseline cannot close in this call). A row whose baseline is
        then due (Schedule.baseline_ready) closes it."""
        c, det, sch = self.c, self.c.detector, self.c.schedule
        det.collect_trace(v, weights)
        c.count(detector_bytes=det.nbytes())
        for row, n in zip(c.rows, counts):
            if n:
                row.base_count += int(n)
                c.count(baseline=int(n))
        done = [s is not None and not row.base_done and sch.baseline_ready(row, s) for row, s in zip(c.rows, last)]
        if any(done):
            det.finalize(c.flags(done))
            for row, flag in zip(c.rows, done):
                if flag:
                    row.base_done, row.window = True, 0
        if all(row.base_done for row in c.rows) and det.windows.shape[1]:
            det.drop_windows()

    # ------------------------------------------------------------------ windows and checks
    def window(self, b: int, n: int) -> int:
        """n pruned vectors of row b join its decode windows (W each); the number of windows they closed."""
        row, W = self.c.rows[b], self.c.schedule.W
        total = row.window + int(n)
        row.window = total % W
        self.c.count(signal=int(n))
        return total // W

    def judge(self, b: int, step: int, cosine: float, tau: float, request: int, row: int) -> bool | None:
        """One window of row b closed at forward `step` with this cosine and threshold: None inside the cool-down
        (unchecked); else logged and counted, and whether the row's pressure fires."""
        c, sch = self.c, self.c.schedule
        state = c.rows[b]
        if not sch.checked(state, step):
            return None
        entry = {"request": request, "row": row, "step": step, "cosine": cosine, "threshold": tau}
        c.count(window=entry, checks=1)
        if sch.press(state, c.detector.below(cosine, tau, step)):
            c.count(trigger=entry)
            return True
        return False

    # ------------------------------------------------------------------ the timing controls
    def tick(self, b: int, step: int, request: int, row: int) -> bool:
        """Row b ran forward `step` pruned: under retrace_at=periodic / random, whether the rule fires there (logged)."""
        c, sch = self.c, self.c.schedule
        state = c.rows[b]
        state.since += 1
        if sch.fires(state, step, request, row):
            c.count(trigger={"request": request, "row": row, "step": step, "cause": sch.timing})
            return True
        return False

    # ------------------------------------------------------------------ a trigger
    def retrace(self, b: int, t: int) -> None:
        """Row b's trigger at forward t: the segment (or dense hold) it starts (Schedule.retrace)."""
        self.c.schedule.retrace(self.c.rows[b], t)
