"""TEAL's block-wise greedy allocation (docs/method.md "TEAL as published"; `teal/greedyopt.py` in TEAL's repository):
how sparse each of a decoder layer's seven projections runs so that their parameter-weighted mean sparsity reaches a
target with the least error in the block's output.

Per layer, starting from every projection dense: each step tries raising each projection p that is still below 1 by
its own step `step / w_p` (w_p: p's parameter count relative to q's, so every step adds the same `step / sum(w)` to
the weighted mean), keeps the one whose block output is closest to the dense block's, and records the row (weighted
sparsity, that error, the seven sparsities); it stops once the weighted mean reaches `until`. A run at sparsity s
takes, per layer, the recorded row whose weighted sparsity is closest to s (TEAL's lookup). The trajectory is
deterministic, so a shorter `until` gives a prefix of a longer one: one trajectory serves every target below it.

The error is TEAL's: the L2 norm over sequence positions of (dense - sparse block output) on the last `last_fraction`
of each sequence's positions, averaged over the batch and the hidden dimension. The projections' inputs are
thresholded as TEAL's code does on a prompt: only the last half of each sequence's positions (T // 2 of them) are
sparse; the first half runs dense. dart.strategies.teal_block computes that error for one Llama-family layer.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

from dart.errors import ConfigError

PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
INPUT_OF = {"q": "attn_in", "k": "attn_in", "v": "attn_in", "o": "attn_out", "gate": "input", "up": "input",
            "down": "down"}  # which calibration distribution each projection's input follows (q, k, v share one)


def projection_weights(sizes: Mapping[str, int]) -> dict[str, float]:
    """Each projection's parameter count relative to q's (TEAL's weight_dict, here from the model's shapes)."""
    missing = [p for p in PROJECTIONS if p not in sizes]
    if missing:
        raise ValueError(f"projection sizes lack {', '.join(missing)}")
    return {p: sizes[p] / sizes["q"] for p in PROJECTIONS}


def weighted(sparsities: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """TEAL's effective (model-wide) sparsity of a block: the parameter-weighted mean of its projections'."""
    return sum(sparsities[p] * weights[p] for p in PROJECTIONS) / sum(weights[p] for p in PROJECTIONS)


def greedy(error: Callable[[dict[str, float]], float], weights: Mapping[str, float], until: float, step: float,
           committed: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """The trajectory of one block (see the module): a row per step with `sparsity` (weighted), `error` (the chosen
    step's) and each projection's sparsity. `error(sparsities)` is the block-output error at those sparsities;
    `committed(sparsities)` (optional) is told the state after each step (an evaluator drops what it cached for the
    steps not taken). Ties go to the first projection in PROJECTIONS order, as TEAL's strict `<`."""
    steps = {p: step / weights[p] for p in PROJECTIONS}
    s = {p: 0.0 for p in PROJECTIONS}
    rows: list[dict[str, float]] = []
    while weighted(s, weights) < until:
        best, best_err = None, float("inf")
        for p in PROJECTIONS:
            if s[p] >= 1.0:
                continue
            trial = dict(s)
            trial[p] += steps[p]
            err = float(error(trial))
            if err < best_err:
                best, best_err = p, err
        if best is None:
            raise ValueError("every projection is fully sparse before the weighted target was reached")
        s[best] += steps[best]
        if committed is not None:
            committed(dict(s))
        rows.append({"sparsity": weighted(s, weights), "error": best_err, **s})
    return rows


def pick(rows: list[dict[str, float]], target: float) -> dict[str, float]:
    """The row whose weighted sparsity is closest to `target` (the first of equals), as TEAL's lookup; all dense
    when target is 0."""
    if target <= 0.0 or not rows:
        return {"sparsity": 0.0, "error": 0.0, **{p: 0.0 for p in PROJECTIONS}}
    return min(rows, key=lambda r: abs(r["sparsity"] - target))


# ------------------------------------------------------------------------------------------------ its settings

@dataclasses.dataclass(frozen=True)
class GreedySpec:
    """strategy.greedy of strategy=teal_published (conf/strategy/teal_published.yaml says what each is)."""

    step: float = 0.05
    until: float = 0.9
    last_fraction: float = 0.25
    sequences: int = 2

    @classmethod
    def from_dict(cls, d) -> "GreedySpec":
        d = dict(d or {})
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in fields]
        if unknown:
            raise ConfigError(f"strategy.greedy.{unknown[0]}: unknown; allowed: {', '.join(fields)}")
        spec = cls(**{k: (int(v) if k == "sequences" else float(v)) for k, v in d.items()})
        if not 0.0 < spec.step <= 1.0:
            raise ConfigError(f"strategy.greedy.step={spec.step}; allowed: 0 < step <= 1")
        if not 0.0 < spec.until <= 1.0:
            raise ConfigError(f"strategy.greedy.until={spec.until}; allowed: 0 < until <= 1")
        if not 0.0 < spec.last_fraction <= 0.5:
            raise ConfigError(f"strategy.greedy.last_fraction={spec.last_fraction}; allowed: 0 < last_fraction <= 0.5")
        if spec.sequences < 1:
            raise ConfigError(f"strategy.greedy.sequences={spec.sequences}; allowed: >= 1")
        return spec
