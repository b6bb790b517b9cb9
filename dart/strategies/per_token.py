"""Per-token activation sparsity (docs/method.md section 8a): every token zeroes its own FFN inputs, with no trace, no
prompt mask and no detector.

- CATS (Lee et al., COLM 2024): one threshold per layer on |act(gate x)| (|act(fc x)| for plain FFNs), the
  `sparsity` quantile of the calibration values; a = (g * [|g| >= t_l]) * up x. The gate runs dense.
- TEAL (Liu et al., ICLR 2025), FFN part: a threshold per layer on the FFN input |x| (shared by gate and up, as TEAL's
  uniform allocation) and one on the down projection's input |a|, each the `sparsity` quantile of its calibration
  values: x' = x * [|x| >= t_in], a = act(gate x') * up x', out = down(a * [|a| >= t_down]).
- TEAL as published (`teal_published`): the inputs of all seven projections (q, k and v share one input, each its
  own threshold; o; gate and up share one; down), with per-layer sparsities from TEAL's greedy allocation on the
  calibration text (dart.strategies.teal_greedy, dart.strategies.teal_block), `sparsity` being TEAL's model-wide
  target (the parameter-weighted mean over a block's seven projections); the attention projections through
  dart.strategies.per_token_attention.
- WINA (arXiv 2505.19427, 2025): per token, the top k = floor((1 - sparsity) n) inputs of each projection by |x_i|
  times the L2 norm of the weight column that consumes input i (gate's and up's own columns, so their masks differ;
  down: the column of W_down neuron j feeds); no calibration, no orthogonalising transform.

`strategy.prompt=dense` (default): a request's prompt runs dense, every continuation token sparse, as these methods
run when decoding and as the whole-sequence methods treat the prompt they trace: a forward with an empty KV cache,
or one a scorer marks as the prompt's (dart.engine.patch.prompt_phase), is dense; `sparse`: every token.
Nothing is reused or compacted. Scoring (teacher forcing) runs the rules masked, every weight read; decoding on a CPU
runs them on the sparse-input kernels (dart.kernels), which read only the weight rows of active inputs
(dart.strategies.per_token_rules: both executions and what they skip; the engine: dart.strategies.per_token_engine).
**Effective sparsity**, the unit of every method: the fraction of the FFN's weight reads a sparse kernel would skip
over the sparse tokens (padding left out). A zeroed input of gate and up skips a column of each (2I weights), of down
a row (D weights); CATS's zeroed g skips a row of up and of down (2D); a neuron mask (DART, GRIFFIN, static) skips
its neuron's row of gate and up and column of down, the fraction of neurons skipped as before. Over a gated FFN's 3ID
weights: TEAL (2 z_in + z_down) / 3, WINA (z_gate + z_up + z_down) / 3, CATS 2 z_g / 3 (z: the zeroed fraction of
each input). `achieved`: the zeroed fraction of what the method thresholds (CATS's g; TEAL's and WINA's weight reads).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch

from dart.config_checks import check_sparsity
from dart.errors import ConfigError
from dart.engine.adapters import adapter_for
from dart.strategies.base import Strategy
from dart.strategies.per_token_engine import PerTokenEngine
from dart.strategies.per_token_rules import CatsRule, Rule, TealPublishedRule, TealRule, WinaRule


# ------------------------------------------------------------------------------------------------ the strategies
PROMPTS = ("dense", "sparse")

def _ignored(ranking) -> dict:
    return {} if ranking in (None, "magnitude") else {"ranking": ranking}


class PerTokenStrategy(Strategy):
    """A per-token method: the prompt dense, every continuation token its own mask. `dynamic`: evaluations score a
    continuation after its prompt (as decoding), not in one pass."""

    dynamic = True
    execution = ("masked when scoring (every weight read); decoding on a CPU: sparse-input kernels reading only the "
                 "active inputs' weight rows (dart.kernels)")

    def __init__(self, name: str, sparsity: float, ranking: str, prompt: str, calibration: dict | None = None):
        from dart.errors import choice_error
        from dart.strategies.calibration import CalibrationSpec

        super().__init__(name=name, sparsity=check_sparsity(sparsity), ranking=ranking)
        if prompt not in PROMPTS:
            raise choice_error(f"strategy.prompt (strategy={name})", prompt, PROMPTS)
        self.prompt = prompt
        self.calibration = CalibrationSpec.from_dict(calibration) if calibration is not None else None
        self.ignored = _ignored(ranking)
        self.engine: PerTokenEngine | None = None
        self.calibration_info: dict[str, Any] | None = None
        self._summary: dict[str, Any] = {}
        self._rule: tuple[Any, Rule] | None = None  # (the model it was made for, the rule): a re-attach reuses it

    def make_rule(self, model, tokenizer) -> Rule:
        raise NotImplementedError

    def attach(self, model, tokenizer=None) -> None:
        super().attach(model, tokenizer)
        if self._rule is None or self._rule[0] is not model:  # the same model again (a bench's repeats): no new
            t0 = time.perf_counter()                            # calibration
            self._rule = (model, self.make_rule(model, tokenizer))
            if self.calibration_info is not None:
                self.calibration_info["seconds"] = round(time.perf_counter() - t0, 4)
        self._summary = {}
        self.engine = PerTokenEngine(model, self._rule[1], self.prompt).attach()

    def detach(self) -> None:
        if self.engine is not None and self.model is not None:
            self._summary = self._measure()
            self.engine.detach()
        self.engine = None  # nothing of the model's (its K-major copies above all) outlives the attachment
        super().detach()

    def paused(self):
        return self.engine.paused()

    def decode_counts(self) -> tuple[float, float]:
        if self.engine is None:
            return 0.0, 0.0
        m = self.engine.measure()
        n = float(m["tokens"]["sparse"])
        return (m["effective"] or 0.0) * n, n

    def _measure(self) -> dict[str, Any]:
        m = self.engine.measure()
        return {
            "sparsity": {"target": self.sparsity, "achieved": m["achieved"], "effective": m["effective"],
                         "effective_prefill": 0.0, "tokens": m["tokens"],
                         "unit": "FFN weight reads skipped (a sparse kernel's)", "execution": self.execution,
                         "effective_model": m["effective_model"], "effective_attention": m["effective_attention"],
                         "unit_model": "attention (q, k, v, o) and FFN weight reads skipped (TEAL's model-wide figure)",
                         "per_layer": {"target": [self.sparsity] * self.engine.L, "achieved": m["per_layer_achieved"],
                                       "effective": m["per_layer_effective"],
                                       "effective_model": m["per_layer_effective_model"]}},
            "overhead": m["overhead"],
        }

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        spec = {"sparsity": self.sparsity, "prompt": self.prompt}
        if self.calibration is not None:
            spec["calibration"] = dataclasses.asdict(self.calibration)
        out["strategy"].update(spec=spec, calibration=self.calibration_info, ignored=self.ignored)
        out.update(self._summary or (self._measure() if self.engine is not None and self.model is not None else {}))
        return out


class Cats(PerTokenStrategy):
    name = "cats"

    def make_rule(self, model, tokenizer) -> Rule:
        from dart.strategies.calibration_stats import calibrate, calibrated, quantile_threshold

        spec = self.calibration
        seqs = spec.sequences(tokenizer)

        def compute() -> dict:
            cal = calibrate(model, seqs, values=("gate",), sample=spec.sample, seed=spec.seed)
            thresholds = torch.stack([quantile_threshold(v, self.sparsity) for v in cal.values["gate"]])
            below = torch.stack([(v < t).float().mean() for v, t in zip(cal.values["gate"], thresholds)])
            return {"thresholds": thresholds, "below": below, "tokens": cal.tokens,
                    "values_per_layer": cal.values["gate"][0].numel()}

        got = calibrated(model, seqs, "cats_thresholds", {"sparsity": self.sparsity, "sample": spec.sample,
                                                          "seed": spec.seed}, compute)
        thresholds = got["thresholds"]
        read = torch.stack([thresholds, got["below"]]).tolist()  # one read, at attach
        self.calibration_info = {"source": spec.source, "tokens": got["tokens"], "seq_len": spec.seq_len,
                                 "seed": spec.seed, "values_per_layer": got["values_per_layer"], "thresholds": read[0],
                                 "calibration_sparsity": read[1]}
        weights = adapter_for(model).all_weights(model)
        dtype = weights[0].w_down_t.dtype
        # each threshold is one of the calibration |g| values, computed in this dtype: the cast is exact
        return CatsRule([t.to(w.w_down_t.device, dtype) for t, w in zip(thresholds, weights)])


class Teal(PerTokenStrategy):
    name = "teal"

    def make_rule(self, model, tokenizer) -> Rule:
        from dart.strategies.calibration_stats import calibrate, calibrated, quantile_threshold

        spec = self.calibration
        seqs = spec.sequences(tokenizer)

        def compute() -> dict:
            cal = calibrate(model, seqs, values=("input", "down"), sample=spec.sample, seed=spec.seed)
            return {"input": torch.stack([quantile_threshold(v, self.sparsity) for v in cal.values["input"]]),
                    "down": torch.stack([quantile_threshold(v, self.sparsity) for v in cal.values["down"]]),
                    "tokens": cal.tokens,
                    "values_per_layer": {k: cal.values[k][0].numel() for k in ("input", "down")}}

        got = calibrated(model, seqs, "teal_thresholds", {"sparsity": self.sparsity, "sample": spec.sample,
                                                          "seed": spec.seed}, compute)
        weights = adapter_for(model).all_weights(model)
        dtype = weights[0].w_down_t.dtype
        t = {k: list(got[k].unbind()) for k in ("input", "down")}
        read = torch.stack([got["input"], got["down"]]).tolist()
        self.calibration_info = {"source": spec.source, "tokens": got["tokens"], "seq_len": spec.seq_len,
                                 "seed": spec.seed, "values_per_layer": got["values_per_layer"],
                                 "thresholds_input": read[0], "thresholds_down": read[1]}
        on = lambda ts: [x.to(w.w_down_t.device, dtype) for x, w in zip(ts, weights)]  # noqa: E731  (exact casts)
        return TealRule(on(t["input"]), on(t["down"]))


class TealPublished(PerTokenStrategy):
    """TEAL as its code runs it: all seven projections, TEAL's greedy per-layer allocation (see the module)."""

    name = "teal_published"

    def __init__(self, name: str, sparsity: float, ranking: str, prompt: str, calibration: dict | None = None,
                 greedy: dict | None = None):
        from dart.strategies.teal_greedy import GreedySpec

        super().__init__(name=name, sparsity=sparsity, ranking=ranking, prompt=prompt, calibration=calibration)
        self.greedy = GreedySpec.from_dict(greedy)
        if self.sparsity > self.greedy.until:
            raise ConfigError(f"strategy.sparsity={self.sparsity} is above strategy.greedy.until={self.greedy.until}, "
                              "where TEAL's greedy trajectory stops; allowed: sparsity <= until")

    def make_rule(self, model, tokenizer) -> Rule:
        from dart.strategies.calibration_stats import calibrate, calibrated, sorted_threshold
        from dart.strategies.teal_block import allocate, check_supported
        from dart.strategies.teal_greedy import INPUT_OF, PROJECTIONS
        from dart.progress import phase

        check_supported(model)
        spec, g = self.calibration, self.greedy
        seqs = spec.sequences(tokenizer)
        batch = [s for s in seqs[:g.sequences] if s.numel() == seqs[0].numel()]
        if len(batch) < g.sequences:
            raise ConfigError(f"strategy.greedy.sequences={g.sequences}: the calibration holds {len(batch)} full "
                              f"sequences of {seqs[0].numel()} tokens; allowed: 1..{len(batch)}")

        def compute() -> dict:
            cal = calibrate(model, seqs, values=tuple(dict.fromkeys(INPUT_OF.values())), sample=spec.sample,
                            seed=spec.seed)
            ordered = {k: [v.sort().values for v in vs] for k, vs in cal.values.items()}
            th = lambda l, p, s: sorted_threshold(ordered[INPUT_OF[p]][l], s)  # noqa: E731
            ids = torch.stack(batch).to(next(model.parameters()).device)
            L = len(model.model.layers)
            with phase(f"TEAL's greedy allocation ({ids.numel()} tokens, up to {g.until:.0%})", L, unit="layer") as step:
                rows = allocate(model, ids, th, g.step, g.until, g.last_fraction, progress=step)
            return {"rows": [torch.tensor([[r["sparsity"], r["error"]] + [r[p] for p in PROJECTIONS] for r in rs],
                                          dtype=torch.float64) for rs in rows],
                    "thresholds": [torch.tensor([[th(l, p, r[p]) for p in PROJECTIONS] for r in rs], dtype=torch.float32)
                                   for l, rs in enumerate(rows)],
                    "tokens": cal.tokens, "greedy_tokens": ids.numel()}

        got = calibrated(model, seqs, "teal_published", {"sample": spec.sample, "seed": spec.seed,
                                                         **dataclasses.asdict(g)}, compute)
        picked = [pick_row(r.tolist(), self.sparsity) for r in got["rows"]]  # one read per layer, at attach
        t = {p: [] for p in PROJECTIONS}
        weights = adapter_for(model).all_weights(model)
        for l, (i, w) in enumerate(zip(picked, weights)):
            row = got["thresholds"][l][i] if i is not None else torch.zeros(len(PROJECTIONS))
            for j, p in enumerate(PROJECTIONS):  # each threshold is a calibration value (or 0, inf): exact casts
                t[p].append(row[j].to(w.w_down_t.device, w.w_down_t.dtype))
        rows = [got["rows"][l][i].tolist() if i is not None else [0.0] * (2 + len(PROJECTIONS))
                for l, i in enumerate(picked)]
        self.calibration_info = {
            "source": spec.source, "tokens": got["tokens"], "seq_len": spec.seq_len, "seed": spec.seed,
            "greedy": {**dataclasses.asdict(g), "tokens": got["greedy_tokens"]},
            "weighted_sparsity": [r[0] for r in rows], "block_error": [r[1] for r in rows],
            "sparsities": {p: [r[2 + j] for r in rows] for j, p in enumerate(PROJECTIONS)},
            "thresholds": {p: [float(x) if math.isfinite(float(x)) else None for x in t[p]] for p in PROJECTIONS}}  # None: +inf, every input zeroed
        return TealPublishedRule(t)


def pick_row(rows: list[list[float]], target: float) -> int | None:
    """The index of the trajectory row (weighted sparsity first) TEAL's lookup takes for `target`
    (dart.strategies.teal_greedy.pick); None (every projection dense) at 0."""
    from dart.strategies.teal_greedy import pick

    if target <= 0.0 or not rows:
        return None
    chosen = pick([{"sparsity": r[0], "i": i} for i, r in enumerate(rows)], target)
    return int(chosen["i"])


class Wina(PerTokenStrategy):
    name = "wina"

    def make_rule(self, model, tokenizer) -> Rule:
        weights = adapter_for(model).all_weights(model)
        col = lambda m: torch.linalg.vector_norm(m, dim=0, dtype=torch.float32)  # noqa: E731  (||W[:, i]||)
        norms_in = [[col(m) for m in w.w_in] for w in weights]  # w_in[i] is (I, D): input i is its column i
        norms_down = [torch.linalg.vector_norm(w.w_down_t, dim=1, dtype=torch.float32) for w in weights]  # (I,)
        self.calibration_info = None
        return WinaRule(norms_in, norms_down, self.sparsity)
