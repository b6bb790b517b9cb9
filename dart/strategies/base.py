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

    # ------------------------------------------------------------------ what evaluators may ask (dart.evals)
    def scores_in_one_pass(self) -> bool:
        """Whether lm-eval's requests are scored whole in one forward each (`score`), the compat protocol."""
        return False

    def score(self, model, input_ids, prompt_len, attention_mask=None):
        """Logits of one scoring forward over whole requests (only where scores_in_one_pass())."""
        raise NotImplementedError(f"strategy {self.name!r} does not score requests in one pass")

    def requests_started(self) -> int:
        """Requests (batches of rows) the strategy has started so far: numbers its drift-log entries."""
        return 0

    def decode_counts(self) -> tuple[float, float]:
        """(skipped, tokens) so far over the decoded (teacher-forced or generated) tokens: `tokens` of them, and the
        sum over them of the fraction of FFN work each skipped, so that skipped / tokens is the effective sparsity
        (the difference over one batch is that batch's). A strategy that skips nothing: (0, 0)."""
        return 0.0, 0.0

    def lockstep(self, batch_size: int) -> bool:
        """Whether a batch of this size runs as one request with one shared mask (batch_mask=shared)."""
        return False


class Dense(Strategy):
    name = "dense"

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["sparsity"] = {"target": 0.0, "achieved": 0.0, "effective": 0.0, "per_layer": None}
        return out
