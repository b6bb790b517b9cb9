"""What one forward does in every layer: the controller's plan (built per forward by the schedule, or forced by
one-pass scoring and chunked teacher forcing)."""
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


IDLE = Plan()
