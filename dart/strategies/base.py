"""Strategy base class and the dense (no pruning) strategy."""
from __future__ import annotations

import contextlib
from typing import Any


class Strategy:
    name = "strategy"
    dynamic = False  # masks depend on the input

    def __init__(self, name: str | None = None, sparsity: float = 0.0, ranking: str | None = None, **kwargs):
        if name:
            self.name = name
        self.sparsity = float(sparsity)
        self.ranking = ranking
        self.model = None

    def attach(self, model, tokenizer=None) -> None:
        self.model = model

    def detach(self) -> None:
        self.model = None

    def paused(self):
        """Context in which the model runs dense (the reference for fidelity and drift studies)."""
        return contextlib.nullcontext()

    def drift_log(self) -> tuple[list[dict], list[dict]]:
        """(every drift window check, the triggers) so far; empty for strategies without a detector."""
        return [], []

    def summary(self) -> dict[str, Any]:
        return {"strategy": {"name": self.name, "dynamic": self.dynamic}}


class Dense(Strategy):
    name = "dense"

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["sparsity"] = {"target": 0.0, "achieved": 0.0, "effective": 0.0, "per_layer": None}
        return out
