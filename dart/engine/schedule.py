"""DART's schedule, written once (docs/method.md sections 2 and 5): which forward of a row traces, builds, prunes,
feeds the drift detector's baseline or a window, and what a trigger starts. Every driver asks these rules: the
token-by-token one (dart.engine.stepper, the exact reference), chunked teacher forcing (dart.engine.forcing) and
one-pass scoring (dart.engine.onepass) for its single pass; what a decision does to a row, the detector and the
counters is dart.engine.bookkeeping's.

A row's life is a sequence of segments (the request's first one, then one per trigger). In a segment, local step
s = forward index - row.origin and n = row.n (masking_step for the first segment, the re-trace length after):
    trace       s in [first, n): the layers' statistics accumulate (first = 0; see "mid-forward" below);
                s == first == n: the same-pass build (m = 0): a layer traces and masks the same forward
    build       s == n: the segment's masks (between forwards, or inside the forward when a same-pass layer needs
                its own statistics first); pruned from s == n on
    baseline    the monitored attention outputs of s in [base_from, last] join the detector's baseline, last = n
                (drift.phase=published: the forward that builds the masks included) or n - 1 (before_mask), and it
                keeps collecting, the masks already in use, until it holds drift.min_windows windows of W vectors
    windows     after the baseline, every W pruned forwards close a window; a window closing within drift.cooldown
                forwards of the last trigger is not checked; a checked window below the threshold raises the
                pressure by one (else lowers it, floor 0), and pressure >= drift.triggers fires
    timing      strategy.retrace_at: the detector's trigger (above), or a control that ignores the text: `periodic`
                fires at the retrace_every-th pruned forward of a segment (counted again after a dense hold),
                `random` at each pruned forward with probability retrace_rate (a coin of (retrace_seed, request,
                row, forward): the same in every driver)
    trigger     strategy.on_retrace=dense (the dense-fallback control): forwards t + 1 .. t + retrace_tokens run
                dense, the masks and the baseline kept, then the same masks again. Otherwise (remask):
                at forward t: a new segment of n = strategy.retrace_tokens (or masking_step) forwards. Clean
                (default): it starts at t + 1 (origin t + 1; every layer dense and tracing from there).
                Mid-forward (strategy.published_quirks, as the published code): the row is reset inside forward t,
                right after the last monitored layer's attention output was checked, so forward t is the new
                segment's s = 0 for the layers from that layer on (they run it dense and trace it) while the layers
                before it already ran it pruned and start tracing at s = 1 (early_from = 1); the masks are built at
                t + n; the baseline holds the vectors of t + 1 .. t + n (base_from = 1: forward t's own was consumed
                by the check)
    release     from request forward r on (strategy.release_step) every row runs dense, nothing traced or checked
Depth-aware allocation (allocation=auto) needs every layer's statistics: a layer builds only if it and every later
layer traced before the build forward (the published code defers the others: they stay unmasked for the segment).
"""
from __future__ import annotations

from dart.engine.rows import Row
from dart.engine.spec import EngineSpec


class Schedule:
    def __init__(self, spec: EngineSpec, window: int | None, fixed: bool, split: int):
        """window: the detector's W (None: no detector); fixed: fixed masks (nothing is ever traced or built);
        split: the first layer whose FFN runs after the last monitored attention output (the mid-forward reset
        point; the number of layers when there is no detector)."""
        self.spec = spec
        self.m, self.r = int(spec.masking_step), spec.release_step
        self.retrace_len = spec.retrace_len
        self.W = window
        self.fixed = fixed
        self.split = split
        self.timing, self.action = spec.retrace_at, spec.on_retrace
        self.every, self.rate, self.seed = int(spec.retrace_every), float(spec.retrace_rate), int(spec.retrace_seed)
        self.midway = bool(spec.published_quirks) and window is not None and self.timing == "detector" and self.action == "remask"
        self.global_build = spec.global_build
        d = spec.drift
        self.need = 1 if d.nan_tau_compat or int(d.min_windows) <= 1 else int(d.min_windows) * (window or 1)
        self.cooldown = int(d.cooldown)
        self.published_phase = d.phase == "published"

    # ------------------------------------------------------------------ segments
    def new_row(self) -> Row:
        """A request's row: fixed masks hold their mask from the first forward on (a segment with nothing to trace)."""
        return Row(n=0, has_mask=True) if self.fixed else Row(n=self.m)

    def released(self, step: int) -> bool:
        return self.r is not None and step >= int(self.r)

    @staticmethod
    def first(row: Row, early: bool) -> int:
        """The first local step whose statistics a layer group traces (early: the layers before `split`)."""
        return row.early_from if early else 0

    def traces(self, row: Row, s: int, early: bool) -> bool:
        if self.fixed:
            return False
        first = self.first(row, early)
        return first <= s < row.n or s == first == row.n

    def fresh(self, row: Row, s: int, early: bool) -> bool:
        """Statistics start from zero at this forward (the EMA's first update)."""
        return s == self.first(row, early)

    def builds_now(self, row: Row, s: int) -> bool:
        """This forward gets the segment's masks (built before it, or inside it: in_layer)."""
        return not self.fixed and s == row.n

    def in_layer(self, row: Row) -> bool:
        """The build happens inside the forward (a layer group whose statistics start at the build forward)."""
        return row.n == 0 or row.early_from == row.n

    def group_builds(self, row: Row, early: bool) -> bool:
        """Whether a layer group gets a mask in this segment (depth-aware allocation: only if it and every later
        layer traced before the build forward)."""
        first = self.first(row, early)
        if first > row.n:
            return False
        if self.global_build:
            return first < row.n and (not early or 0 < row.n)
        return True

    def pruned(self, row: Row, s: int, step: int) -> bool:
        """This forward runs the row's masks built before it (in-layer builds: see builds_now; not in a dense hold)."""
        return row.has_mask and s >= row.n and (row.hold_until is None or step > row.hold_until)

    # ------------------------------------------------------------------ the detector
    def collects(self, row: Row, s: int) -> bool:
        """This forward's monitored vector joins the row's baseline."""
        return self.W is not None and not self.fixed and not row.base_done and s >= row.base_from

    def baseline_last(self, row: Row) -> int:
        return row.n if self.published_phase else max(row.n, 1) - 1

    def baseline_ready(self, row: Row, s: int) -> bool:
        """After forward s (its vectors counted): the baseline closes (the phase's last forward reached and enough
        vectors)."""
        return s >= self.baseline_last(row) and row.base_count >= self.need

    def baseline_close_col(self, row: Row, s0: int) -> int:
        """Over a run of forwards from local step s0 that each add one vector from base_from on: the run's index
        (0 = the forward at s0) at which the baseline closes."""
        lead = max(row.base_from - s0, 0)
        return max(self.baseline_last(row) - s0, self.need - 1 - row.base_count + lead, lead)

    def windows(self, row: Row, s: int, step: int) -> bool:
        """This forward's vector joins the decode window being filled."""
        return self.W is not None and row.base_done and self.pruned(row, s, step)

    def checked(self, row: Row, step: int) -> bool:
        """A window closing at `step` is compared with the baseline (not within the cool-down after a trigger)."""
        return row.last_trigger is None or step - row.last_trigger >= self.cooldown

    def press(self, row: Row, below: bool) -> bool:
        """One checked window: the pressure counter; True when it fires (the pressure starts over)."""
        row.pressure = row.pressure + 1 if below else max(row.pressure - 1, 0)
        if row.pressure >= int(self.spec.drift.triggers):
            row.pressure = 0
            return True
        return False

    # ------------------------------------------------------------------ the timing controls
    def fires(self, row: Row, step: int, request: int, b: int) -> bool:
        """retrace_at=periodic / random, after a pruned forward (its `since` counted): a trigger at this forward."""
        if self.timing == "periodic":
            return row.since >= self.every
        if self.timing == "random":
            return coin(self.seed, request, b, step) < self.rate
        return False

    # ------------------------------------------------------------------ a trigger
    def retrace(self, row: Row, t: int) -> None:
        """What the row does after its trigger at forward t: a dense hold (on_retrace=dense, the masks kept), or the
        segment it starts (its masks and statistics are dropped by the controller)."""
        row.window, row.pressure, row.since, row.last_trigger = 0, 0, 0, t
        if self.action == "dense":
            row.hold_until = t + self.retrace_len
            return
        row.hold_until = None
        row.seg_lengths.append(t + 1 - row.origin)
        row.origin = t if self.midway else t + 1
        row.early_from = 1 if self.midway and self.split > 0 else 0
        row.base_from = 1 if self.midway else 0
        row.n = self.retrace_len
        row.has_mask = False
        row.base_done, row.base_count = False, 0


def coin(seed: int, request: int, row: int, step: int) -> float:
    """A uniform number in [0, 1) from (seed, request, row, forward): splitmix64, so every driver draws the same."""
    x = (seed * 0x9E3779B97F4A7C15 + request * 0xBF58476D1CE4E5B9 + row * 0x94D049BB133111EB + step) & (2**64 - 1)
    x = (x + 0x9E3779B97F4A7C15) & (2**64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (x ^ (x >> 31)) / 2**64
