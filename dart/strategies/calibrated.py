"""The calibrated, input-independent mask (docs/method.md section 8): `static`. (The calibrated per-token methods,
CATS and TEAL, are dart.strategies.per_token.)

It calibrates once, at attach, on a text disjoint from every evaluation text (strategy.calibration.source, one of
dart.data.texts.CALIBRATION_SOURCES; see dart.strategies.calibration_stats), and then never looks at the input to
decide what to prune. The top-level `ranking` (DART's vocabulary-projection prior) does not apply: results.json lists
it under strategy.ignored when it is not the default.

- Static: one mask per layer, top-k with k = floor((1 - sparsity) I) of a static neuron score (`score`: act_norm,
  wanda or weight; formulas in dart.strategies.calibration_stats.neuron_scores), used unchanged for every request.
  It owns a Controller with fixed masks (dart.strategies.engine_backed.ControllerStrategy): no tracing and no
  drift; a single sequence runs the compacted FFN (the kept neurons are moved to a prefix once, at attach), a batch
  the masked one, as dart/static_prompt masks do.
"""
from __future__ import annotations

import time
from typing import Any

from dart.config_checks import check_sparsity
from dart.errors import ConfigError, choice_error
from dart.strategies.calibration_stats import SCORES
from dart.strategies.engine_backed import ControllerStrategy
from dart.strategies.per_token import _ignored  # one rule for what a calibrated strategy ignores


class Static(ControllerStrategy):
    name = "static"
    dynamic = False  # the same mask for every input

    def __init__(self, name: str, sparsity: float, ranking: str, score: str, calibration: dict, execution: str,
                 **extra):
        from dart.compose import engine_spec
        from dart.strategies.calibration import CalibrationSpec

        if "drift" in extra:
            raise ConfigError("strategy=static never re-traces: it has no strategy.drift (use strategy=dart)")
        if extra:
            raise ConfigError(f"strategy.{sorted(extra)[0]} is not a knob of strategy=static; knobs: score, calibration, execution")
        if score not in SCORES:
            raise choice_error("strategy.score", score, SCORES)
        self.score = score
        self.ignored = _ignored(ranking)
        super().__init__(name=name, sparsity=check_sparsity(sparsity), ranking="magnitude")
        # the engine runs the fixed masks: no tracing, no detector (the engine's other knobs do not apply)
        self.spec = engine_spec(sparsity=self.sparsity, execution=execution, drift={"enabled": False}).validate()
        self.calibration = CalibrationSpec.from_dict(calibration)
        self.calibration_info: dict[str, Any] | None = None

    def make_controller(self, model, tokenizer):
        """A Controller with the calibrated masks fixed; the calibration's time counts as mask build time."""
        from dart.engine.controller import Controller

        t0 = time.perf_counter()
        masks = self.compute_masks(model, tokenizer)
        seconds = time.perf_counter() - t0
        controller = Controller(model, self.spec, fixed_masks=masks)
        controller.count(seconds=seconds)
        if self.calibration_info is not None:
            self.calibration_info["seconds"] = round(seconds, 4)
        return controller

    def compute_masks(self, model, tokenizer=None):
        """(L, I) bool masks in the original neuron order, from the dense model (call before attaching)."""
        from dart.engine.adapters import adapter_for
        from dart.strategies.calibration_stats import activation_norms, neuron_scores, static_masks

        adapter = adapter_for(model)
        weights = adapter.all_weights(model)
        act_sq = None
        if self.score != "weight":  # weight-only needs no data
            act_sq, tokens = activation_norms(model, self.calibration.sequences(tokenizer))
            self.calibration_info = {"source": self.calibration.source, "tokens": tokens,
                                     "seq_len": self.calibration.seq_len}
        return static_masks(neuron_scores(self.score, weights, act_sq), self.spec.sparsity)

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["strategy"].update(score=self.score, calibration=self.calibration_info, ignored=self.ignored)
        return out
