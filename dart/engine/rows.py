"""The engine's per-row host state: one `Row` per sequence of the current batch.

Everything the schedule and the accounting know about a row lives here, as plain Python values (no device reads
on the hot path); the device-side state of a row (statistics, masks, the detector's sums) lives in the controller's
tensors at the same row index, and `Controller.select_rows` moves both together.

Invariants between two forwards (checked by the tests of dart.engine.schedule):
- local step s = (the request's forward index) - origin; the segment's masks are built at s == n;
- has_mask: the segment's masks are built; then every layer's mask row holds them (layers that did not build in
  this segment hold all ones), else every layer's mask row is all ones;
- base_done: the detector's baseline of this segment is set (its center and threshold); before, base_count vectors
  were collected into it; window counts the vectors of the decode window being filled (0 <= window < W);
- pressure: the detector's pressure counter (0 <= pressure < drift.triggers);
- hold_until: after a trigger under on_retrace=dense, the forwards through hold_until run dense, the masks kept;
- pending[kind] (prefill, decode): pruned tokens not yet folded into the run's skipped-neuron totals: they were all
  pruned under the row's CURRENT masks (a mask change folds them first: dart.engine.tally).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Row:
    # ---- the schedule (dart.engine.schedule)
    n: int  # the segment's masking step: masks are built at local step n (m first, the re-trace length after a trigger)
    origin: int = 0  # the request's forward index of the segment's local step 0
    early_from: int = 0  # first local step the layers before the monitored one trace (1 after a mid-forward re-trace)
    base_from: int = 0  # first local step whose monitored vector joins the baseline (1 after a mid-forward re-trace)
    has_mask: bool = False
    base_count: int = 0
    base_done: bool = False
    window: int = 0
    pressure: int = 0
    last_trigger: int | None = None  # the forward of the last trigger
    hold_until: int | None = None  # on_retrace=dense: the row runs dense through this forward, then its masks again
    since: int = 0  # pruned forwards since the masks took effect (or a dense hold ended): retrace_at=periodic
    seg_lengths: list[int] = dataclasses.field(default_factory=list)  # forwards of the segments before this one
    # ---- what the row skipped (dart.engine.tally)
    pending: dict[str, int] = dataclasses.field(default_factory=lambda: {"prefill": 0, "decode": 0})
    debt_tokens: int = 0  # budget=effective: decode tokens so far, and the neuron fraction they skipped
    debt_skip: float = 0.0
    frac: float = 0.0  # the fraction of neurons the row's current masks skip

    def copy(self) -> "Row":
        return dataclasses.replace(self, seg_lengths=list(self.seg_lengths), pending=dict(self.pending))
