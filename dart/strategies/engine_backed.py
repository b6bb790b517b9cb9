"""Strategies that run on the DART engine (dart.engine): dart, static_prompt and griffin, and what every strategy
that owns an engine Controller shares (ControllerStrategy; strategy=static, dart.strategies.calibrated, is the other).

- Dart: trace the prompt, prune, watch the attention output for a change of topic and re-trace.
- StaticPrompt: the prompt's mask, never re-traced (DART without the detector): the paper's "static mask".
- Griffin (Dong et al., COLM 2024): per-token-normalised activation norms of the prompt, the same density in
  every layer, fixed for the whole generation; in scoring, select from the context and prune the positions
  that predict the continuation (its classification mode).
"""
from __future__ import annotations

from typing import Any

from dart.engine.spec import EngineSpec
from dart.strategies.base import Strategy


class ControllerStrategy(Strategy):
    """A strategy that owns an engine Controller (dart.engine.controller). A subclass sets `spec` (its EngineSpec) in
    its constructor and builds its controller in `make_controller`; this class attaches it, measures the run at
    detach (sparsity, overhead, drift: results.json) and answers what evaluators ask (dart.strategies.base)."""

    spec: EngineSpec

    def __init__(self, name: str, sparsity: float, ranking: str | None):
        super().__init__(name=name, sparsity=sparsity, ranking=ranking)
        self.controller = None
        self._summary: dict[str, Any] = {}

    def make_controller(self, model, tokenizer):
        """The Controller this strategy runs on `model`, not yet attached (called by attach, after Strategy.attach)."""
        raise NotImplementedError

    def attach(self, model, tokenizer=None) -> None:
        super().attach(model, tokenizer)
        self.controller = self.make_controller(model, tokenizer).attach()

    def detach(self) -> None:
        if self.controller is not None:
            self._summary = self._measure()
            self.controller.detach()
        super().detach()

    def paused(self):
        return self.controller.paused()

    def scores_in_one_pass(self) -> bool:
        c = self.controller
        return c is not None and c.fixed is None and c.spec.protocol == "compat"

    def score(self, model, input_ids, prompt_len, attention_mask=None):
        return self.controller.score(model, input_ids, prompt_len, attention_mask=attention_mask)

    def requests_started(self) -> int:
        return self.controller.counts.requests if self.controller is not None else 0

    def lockstep(self, batch_size: int) -> bool:
        return self.controller is not None and self.controller.spec.batch_mask == "shared" and batch_size > 1

    def drift_log(self):
        c = self.controller
        return (c.counts.window_log, c.counts.triggers) if c is not None else ([], [])

    def _measure(self) -> dict[str, Any]:
        from dart.engine.overhead import summarize

        c = self.controller
        per_layer_achieved = None
        achieved = None
        if c.counts.builds:
            kept = [v / (c.counts.builds * c.I) for v in c.kept_sum.tolist()]
            per_layer_achieved = [1.0 - k for k in kept]
            achieved = sum(per_layer_achieved) / len(per_layer_achieved)
        if c.fixed_keep is not None:
            per_layer_target = [1.0 - k / c.I for k in c.fixed_keep]
        else:  # data-dependent counts (auto allocation, mean threshold): the target is the mean only
            per_layer_target = None
        target = (sum(per_layer_target) / len(per_layer_target)) if per_layer_target else self.spec.sparsity
        if self.spec.mask_rule == "mean":
            target = None  # the mean threshold keeps a variable count: there is no target
        eff = c.effective()
        return {
            "sparsity": {"target": target, "achieved": achieved, "effective": eff["decode"],
                         "effective_prefill": eff["prefill"], "effective_all": eff["all"],
                         "per_layer": {"target": per_layer_target, "achieved": per_layer_achieved,
                                       "effective": eff["per_layer"]},
                         "tokens": eff["tokens"], "dense_tokens": eff["dense_tokens"],
                         "ffn_bytes_per_generated_token": eff["ffn_bytes_per_generated_token"],
                         "ffn_bytes_dense": eff["ffn_bytes_dense"]},
            "overhead": summarize(c, self.model),
            "drift": {"enabled": self.spec.drift.enabled, "requests": c.counts.requests, "checks": c.counts.checks,
                      "triggers": list(c.counts.triggers), "windows": list(c.counts.window_log)},
        }

    def decode_counts(self) -> tuple[float, float]:
        if self.controller is None:
            return 0.0, 0.0
        eff = self.controller.effective()
        n = float(eff["tokens"]["decode"])
        return (eff["decode"] or 0.0) * n, n

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["strategy"]["spec"] = _spec_dict(self.spec)
        out.update(self._summary or (self._measure() if self.controller is not None else {}))
        return out


class EngineStrategy(ControllerStrategy):
    """A strategy on the DART engine. Its knobs are exactly its composed YAML node (conf/strategy/<name>.yaml on
    top of _engine.yaml): build it with dart.compose.build_strategy (or `strategy=<name>` in a run), which supplies
    every default; the constructor has none."""

    dynamic = True

    def __init__(self, name: str, calibration: dict, **knobs):
        from dart.strategies.calibration import CalibrationSpec

        super().__init__(name=name, sparsity=knobs.get("sparsity"), ranking=knobs.get("ranking"))
        self.spec = EngineSpec.from_dict(knobs).validate()
        self.calibration = CalibrationSpec.from_dict(calibration)  # prior_mix: the global ranking's text

    def make_controller(self, model, tokenizer):
        from dart.engine.controller import Controller

        scores = self._global_ranking(model, tokenizer) if self.spec.prior_mix > 0 else None
        return Controller(model, self.spec, global_scores=scores)

    def _global_ranking(self, model, tokenizer):
        """A calibration-corpus ranking per layer (activation L2 norm over text disjoint from every evaluation),
        for strategy.prior_mix (GLASS, 2025: blend the global ranking into the request's own)."""
        from dart.engine.adapters import adapter_for
        from dart.errors import ConfigError
        from dart.strategies.calibration_stats import activation_norms, neuron_scores

        if tokenizer is None:
            raise ConfigError("strategy.prior_mix needs the tokenizer (for its calibration text)")
        adapter = adapter_for(model)
        weights = adapter.all_weights(model)
        act_sq, _ = activation_norms(model, self.calibration.sequences(tokenizer))
        return neuron_scores("act_norm", weights, act_sq)


def _spec_dict(spec: EngineSpec) -> dict:
    import dataclasses

    return dataclasses.asdict(spec)


class Dart(EngineStrategy):
    name = "dart"


class StaticPrompt(EngineStrategy):
    name = "static_prompt"

    def __init__(self, **knobs):
        super().__init__(**knobs)
        if self.spec.drift.enabled:
            from dart.errors import ConfigError

            raise ConfigError("strategy=static_prompt never re-traces: drift.enabled must be false (use strategy=dart)")


class Griffin(EngineStrategy):
    name = "griffin"
