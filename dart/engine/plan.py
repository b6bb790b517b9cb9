"""What one forward does in every layer: the controller's plan (built per forward by dart.engine.stepper from the
schedule's rules, or forced by one-pass scoring and chunked teacher forcing). A plan may be split: layers from
`split` on run `late` (the layers after the last monitored attention output, which a mid-forward re-trace resets)."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

ROWS = "rows"  # prune every position of the rows that hold a mask


@dataclasses.dataclass
class Plan:
    trace_w: torch.Tensor | None = None  # (B, T) statistic weights, None = no tracing
    decay: torch.Tensor | None = None  # (B,) multiplier of the old statistic (None = 1)
    build_rows: torch.Tensor | None = None  # (B,) rows whose masks are built inside each layer (one pass)
    prune: Any = None  # None | ROWS | (B, T) bool positions
    compact: list[int] | None = None  # kept prefix per layer (a single sequence's, or a batch's union)
    compact_rows: bool = False  # inside the prefix, mask each row with its own mask (a union of different masks)
    drift_trace_w: torch.Tensor | None = None  # (B, T) signal weights while tracing
    drift_decode_rows: torch.Tensor | None = None  # (B,) rows adding to their decode window
    align: bool = False
    capture: bool = False  # keep the monitored attention outputs of this forward (chunked teacher forcing)
    closing: bool = False  # a drift window closes in this forward and a trigger would reset rows inside it
    late: "Plan | None" = None  # the plan of the layers from `split` on, where it differs (a mid-forward re-trace,
    split: int | None = None  # a same-pass re-trace of the layers before the monitored one, EMA freshness)
    _on: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def on(self, device: torch.device) -> "Plan":
        """This plan with its tensors on `device` (a layer on another GPU than the first): moved once per plan
        and device, so a cached steady-state plan moves nothing (dart.engine.placement)."""
        got = self._on.get(device)
        if got is None:
            moved = {}
            for f in dataclasses.fields(self):
                if f.name != "_on":
                    v = getattr(self, f.name)
                    moved[f.name] = v.to(device) if torch.is_tensor(v) else (v.on(device) if isinstance(v, Plan) else v)
            got = self._on[device] = Plan(**moved)
        return got


IDLE = Plan()
