"""Calibrated, input-independent baselines (docs/method.md section 8): `static` and `cats`.

Both calibrate once, at attach, on a text disjoint from every evaluation text (strategy.calibration.source, one of
dart.data.texts.CALIBRATION_SOURCES; see dart.engine.calibration), and then never look at the input to decide
what to prune. The top-level `ranking` (DART's vocabulary-projection prior) does not apply to them: results.json
lists it under strategy.ignored when it is not the default.

- Static: one mask per layer, top-k with k = floor((1 - sparsity) I) of a static neuron score (`score`: act_norm,
  wanda or weight; formulas in dart.engine.calibration.neuron_scores), used unchanged for every request. It runs
  on the engine's Controller with fixed masks: no tracing and no drift; a single sequence runs the compacted FFN
  (the kept neurons are moved to a prefix once, at attach), a batch the masked one, as dart/static_prompt masks do.
- Cats (Lee et al., COLM 2024): one threshold per layer on |act(gate x)| (|act(fc x)| for plain FFNs), the
  `sparsity` quantile of the calibration values; every token zeroes its own entries below it. Per token, so
  never compacted: an accuracy baseline (dart.engine.cats).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from dart.config_checks import check_sparsity
from dart.engine.calibration import SCORES
from dart.errors import ConfigError, choice_error
from dart.strategies.base import Strategy
from dart.strategies.engine_backed import EngineStrategy


def _ignored(ranking) -> dict:
    return {} if ranking in (None, "magnitude") else {"ranking": ranking}


class Static(EngineStrategy):
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
        Strategy.__init__(self, name=name, sparsity=check_sparsity(sparsity), ranking="magnitude")
        # the engine runs the fixed masks: no tracing, no detector (the engine's other knobs do not apply)
        self.spec = engine_spec(sparsity=self.sparsity, execution=execution, drift={"enabled": False}).validate()
        self.calibration = CalibrationSpec.from_dict(calibration)
        self.controller = None
        self._summary = {}
        self.calibration_info: dict[str, Any] | None = None

    def attach(self, model, tokenizer=None) -> None:
        from dart.engine.controller import Controller

        Strategy.attach(self, model, tokenizer)
        t0 = time.perf_counter()
        masks = self.compute_masks(model, tokenizer)
        seconds = time.perf_counter() - t0
        self.controller = Controller(model, self.spec, fixed_masks=masks).attach()
        self.controller.build_seconds += seconds
        if self.calibration_info is not None:
            self.calibration_info["seconds"] = round(seconds, 4)

    def compute_masks(self, model, tokenizer=None):
        """(L, I) bool masks in the original neuron order, from the dense model (call before attaching)."""
        from dart.engine.adapters import adapter_for
        from dart.engine.calibration import calibrate, neuron_scores, static_masks

        adapter = adapter_for(model)
        weights = [adapter.weights(adapter.ffn(layer)) for layer in adapter.layers(model)]
        act_sq = None
        if self.score != "weight":  # weight-only needs no data
            cal = calibrate(model, self.calibration.sequences(tokenizer), norms=True)
            act_sq = cal.act_sq
            self.calibration_info = {"source": self.calibration.source, "tokens": cal.tokens,
                                     "seq_len": self.calibration.seq_len}
        return static_masks(neuron_scores(self.score, weights, act_sq), self.spec.sparsity)

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["strategy"].update(score=self.score, calibration=self.calibration_info, ignored=self.ignored)
        return out


class Cats(Strategy):
    name = "cats"
    dynamic = False  # fixed thresholds: the same rule for every input (per token, so prefill == decode)

    def __init__(self, name: str, sparsity: float, ranking: str, calibration: dict):
        from dart.strategies.calibration import CalibrationSpec

        super().__init__(name=name, sparsity=check_sparsity(sparsity), ranking=ranking)
        self.calibration = CalibrationSpec.from_dict(calibration)
        self.ignored = _ignored(ranking)
        self.engine = None
        self.calibration_info: dict[str, Any] | None = None
        self._summary: dict[str, Any] = {}

    def attach(self, model, tokenizer=None) -> None:
        import torch

        from dart.engine.calibration import calibrate, quantile_threshold
        from dart.engine.cats import ThresholdEngine

        super().attach(model, tokenizer)
        t0 = time.perf_counter()
        spec = self.calibration
        cal = calibrate(model, spec.sequences(tokenizer), gate_sample=spec.sample, seed=spec.seed)
        thresholds = torch.stack([quantile_threshold(v, self.sparsity) for v in cal.gate_values])
        below = torch.stack([(v < t).float().mean() for v, t in zip(cal.gate_values, thresholds)])
        values = torch.stack([thresholds, below]).tolist()  # one read, at attach
        self.calibration_info = {
            "source": spec.source, "tokens": cal.tokens, "seq_len": spec.seq_len, "seed": spec.seed,
            "values_per_layer": cal.gate_values[0].numel(), "thresholds": values[0], "calibration_sparsity": values[1],
            "seconds": round(time.perf_counter() - t0, 4),
        }
        self.engine = ThresholdEngine(model, thresholds).attach()

    def detach(self) -> None:
        if self.engine is not None and self.model is not None:
            self._summary = self._measure()
            self.engine.detach()
        super().detach()

    def paused(self):
        return self.engine.paused()

    def _measure(self) -> dict[str, Any]:
        m = self.engine.measure(self.model)
        return {
            # per token: a token skips the neurons it zeroes (with a sparse kernel), so effective = achieved
            "sparsity": {"target": self.sparsity, "achieved": m["achieved"], "effective": m["achieved"],
                         "per_layer": {"target": [self.sparsity] * self.engine.L, "achieved": m["per_layer"],
                                       "effective": m["per_layer"]}},
            "overhead": m["overhead"],
        }

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["strategy"].update(spec={"sparsity": self.sparsity, "calibration": dataclasses.asdict(self.calibration)},
                               calibration=self.calibration_info, ignored=self.ignored)
        out.update(self._summary or (self._measure() if self.engine is not None and self.model is not None else {}))
        return out
