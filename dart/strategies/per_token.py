"""Per-token activation sparsity (docs/method.md section 8a): every token zeroes its own FFN inputs, with no trace, no
prompt mask and no detector.

- CATS (Lee et al., COLM 2024): one threshold per layer on |act(gate x)| (|act(fc x)| for plain FFNs), the
  `sparsity` quantile of the calibration values; a = (g * [|g| >= t_l]) * up x. The gate runs dense.
- TEAL (Liu et al., ICLR 2025), FFN part: a threshold per layer on the FFN input |x| (shared by gate and up, as TEAL's
  uniform allocation) and one on the down projection's input |a|, each the `sparsity` quantile of its calibration
  values: x' = x * [|x| >= t_in], a = act(gate x') * up x', out = down(a * [|a| >= t_down]).
- WINA (arXiv 2505.19427, 2025): per token, the top k = floor((1 - sparsity) n) inputs of each projection by |x_i|
  times the L2 norm of the weight column that consumes input i (gate's and up's own columns, so their masks differ;
  down: the column of W_down neuron j feeds); no calibration, no orthogonalising transform.

`strategy.prompt=dense` (default): a request's prompt runs dense, every continuation token sparse, as these methods
run when decoding and as the whole-sequence methods treat the prompt they trace: a forward with an empty KV cache,
or one a scorer marks as the prompt's (dart.engine.patch.prompt_phase), is dense; `sparse`: every token.
Nothing is reused or compacted: gate, up and down run masked (every weight read; speed needs sparse GEMV kernels).
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
import torch.nn.functional as F
from torch import nn

from dart.config_checks import check_sparsity
from dart.strategies.base import Strategy


# ------------------------------------------------------------------------------------------------ the rules
def keep_top(score: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k highest entries of score along its last dimension (per token)."""
    idx = score.topk(k, dim=-1).indices
    return torch.zeros(score.shape, dtype=torch.bool, device=score.device).scatter_(-1, idx, True)


class Rule:
    """One method's per-layer state and masked FFN. forward returns (out, zeroed, skipped): zeroed, the (B, T) count
    of entries this method zeroes (what `achieved` counts), skipped, the (B, T) count of FFN weights a sparse kernel
    would not read."""

    name = "rule"

    def forward(self, l: int, w, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def units(self, w) -> int:
        """What `zeroed` is a count of, per token (CATS: the I entries of g; TEAL, WINA: the FFN's weights)."""
        return w_elements(w)

    def zeroed_is_skipped(self) -> bool:
        return True


def w_elements(w) -> int:
    """The FFN's weights: 3ID (gated) or 2ID (plain)."""
    I, D = w.w_in[0].shape
    return (3 if w.gated else 2) * I * D


def _down(w, a: torch.Tensor) -> torch.Tensor:
    out = torch.matmul(a, w.w_down_t)
    return out if w.b_down is None else out + w.b_down


class CatsRule(Rule):
    name = "cats"

    def __init__(self, thresholds: list[torch.Tensor]):
        self.t = thresholds  # per layer, 0-d in the model's dtype on the layer's device

    def forward(self, l, w, x):
        g = w.act(F.linear(x, w.w_in[0], w.b_in[0]))  # gate (gated) or fc (plain)
        g = torch.where(g.abs() >= self.t[l], g, 0.0)
        zeroed = (g == 0).sum(dim=-1)
        a = g * F.linear(x, w.w_in[1], w.b_in[1]) if w.gated else g
        D = w.w_down_t.shape[1]
        return _down(w, a), zeroed, zeroed * (2 * D if w.gated else D)

    def units(self, w) -> int:
        return w.w_in[0].shape[0]

    def zeroed_is_skipped(self) -> bool:
        return False


class TealRule(Rule):
    name = "teal"

    def __init__(self, t_in: list[torch.Tensor], t_down: list[torch.Tensor]):
        self.t_in, self.t_down = t_in, t_down

    def forward(self, l, w, x):
        I, D = w.w_in[0].shape
        x = torch.where(x.abs() >= self.t_in[l], x, 0.0)
        z_in = (x == 0).sum(dim=-1)
        if w.gated:
            a = w.act(F.linear(x, w.w_in[0], w.b_in[0])) * F.linear(x, w.w_in[1], w.b_in[1])
        else:
            a = w.act(F.linear(x, w.w_in[0], w.b_in[0]))
        a = torch.where(a.abs() >= self.t_down[l], a, 0.0)
        z_down = (a == 0).sum(dim=-1)
        skipped = z_in * ((2 if w.gated else 1) * I) + z_down * D
        return _down(w, a), skipped, skipped


class WinaRule(Rule):
    name = "wina"

    def __init__(self, norms_in: list[list[torch.Tensor]], norms_down: list[torch.Tensor], sparsity: float):
        self.norms_in, self.norms_down = norms_in, norms_down  # per layer: fp32 column norms ([gate, up] or [fc]), down's
        self.sparsity = sparsity

    def forward(self, l, w, x):
        I, D = w.w_in[0].shape
        k_in, k_down = keep_count(D, self.sparsity), keep_count(I, self.sparsity)
        ax = x.abs().float()
        xs = [torch.where(keep_top(ax * c, k_in), x, 0.0) for c in self.norms_in[l]]
        if w.gated:
            a = w.act(F.linear(xs[0], w.w_in[0], w.b_in[0])) * F.linear(xs[1], w.w_in[1], w.b_in[1])
        else:
            a = w.act(F.linear(xs[0], w.w_in[0], w.b_in[0]))
        a = torch.where(keep_top(a.abs().float() * self.norms_down[l], k_down), a, 0.0)
        skipped = sum((v == 0).sum(dim=-1) for v in xs) * I + (a == 0).sum(dim=-1) * D
        return _down(w, a), skipped, skipped


def keep_count(n: int, sparsity: float) -> int:
    """WINA's per-token k: floor((1 - sparsity) n), at least 1 (as the engine's top-k masks)."""
    return max(1, math.floor((1.0 - float(sparsity)) * n + 1e-9))


# ------------------------------------------------------------------------------------------------ the engine
class PerTokenFFN(nn.Module):
    """Replaces one decoder layer's FFN while a per-token method is attached."""

    def __init__(self, original: nn.Module, weights, index: int, engine: "PerTokenEngine"):
        super().__init__()
        self.original = original  # kept (not as a submodule) to restore on detach
        object.__setattr__(self, "_engine", engine)
        self.w = weights
        self.index = index

    def __getattr__(self, name):  # keep attribute access of the wrapped module working (e.g. .gate_proj)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["original"], name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self._engine
        if e.is_paused or not e.sparse:
            from dart.engine.ffn import down, intermediate

            return down(self.w, intermediate(self.w, x))
        out, zeroed, skipped = e.rule.forward(self.index, self.w, x)
        e.count(self.index, zeroed, skipped)
        return out


class PerTokenEngine:
    def __init__(self, model, rule: Rule, prompt: str = "dense"):
        from dart.engine.adapters import adapter_for
        from dart.engine.patch import Patch

        self.model, self.rule, self.prompt = model, rule, prompt
        self.adapter = adapter_for(model)
        self.layers = self.adapter.layers(model)
        self.L = len(self.layers)
        self.ffns = [PerTokenFFN(self.adapter.ffn(layer), self.adapter.weights(self.adapter.ffn(layer)), l, self)
                     for l, layer in enumerate(self.layers)]
        self.I = self.ffns[0].w.w_in[0].shape[0]
        self.device = self.ffns[0].w.w_down_t.device
        self.devices = [f.w.w_down_t.device for f in self.ffns]  # a model spread over GPUs: each layer's own
        self.zeros = [torch.zeros((), dtype=torch.float64, device=d) for d in self.devices]
        self.skipped = [torch.zeros((), dtype=torch.float64, device=d) for d in self.devices]
        self.tokens = torch.zeros((), dtype=torch.float64, device=self.device)  # sparse (non-padding) tokens
        self.prompt_tokens = torch.zeros((), dtype=torch.float64, device=self.device)  # dense prompt tokens
        self.forwards = 0
        self.in_prompt = False  # set by dart.engine.patch.prompt_phase around a scorer's prompt forwards
        self.sparse = prompt == "sparse"  # the running forward is sparse (a continuation, or every one)
        self._valid: torch.Tensor | None = None  # (B, T) fp32 of the running forward, None = every token
        self._valid_on: dict = {}
        self.patch = Patch(model, self.adapter, self.layers, self.ffns)

    def attach(self) -> "PerTokenEngine":
        from dart.engine.patch import PER_TOKEN

        self.patch.apply(begin=self._begin)
        setattr(self.model, PER_TOKEN, self)
        return self

    @torch.no_grad()
    def detach(self) -> None:
        from dart.engine.patch import PER_TOKEN

        self.patch.undo()
        if getattr(self.model, PER_TOKEN, None) is self:
            delattr(self.model, PER_TOKEN)

    def paused(self):
        """Run dense (no masks, nothing counted) inside the block: the dense reference."""
        return self.patch.paused()

    @property
    def is_paused(self) -> bool:
        return self.patch.is_paused

    def _begin(self, module, args, kwargs):
        from dart.engine.adapters import forward_input

        if self.is_paused:
            return None
        B, T = forward_input(args, kwargs).shape[:2]
        cache = kwargs.get("past_key_values")
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        self.sparse = self.prompt == "sparse" or (past > 0 and not self.in_prompt)
        mask = kwargs.get("attention_mask")
        self._valid = mask[:, -T:].to(torch.float32) if torch.is_tensor(mask) and mask.dim() == 2 else None
        self._valid_on = {}
        n = float(B * T) if self._valid is None else self._valid.sum()
        if self.sparse:
            self.tokens += n
            self.forwards += 1
        else:
            self.prompt_tokens += n
        return None

    def count(self, layer: int, zeroed: torch.Tensor, skipped: torch.Tensor) -> None:
        """Add a forward's (B, T) counts of one layer over its evaluated tokens (on the device: no host sync)."""
        valid = self._valid
        if valid is not None and valid.device != zeroed.device:  # a layer on another device: the mask moved once
            valid = self._valid_on.get(zeroed.device)
            if valid is None:
                valid = self._valid_on[zeroed.device] = self._valid.to(zeroed.device)
        for acc, v in ((self.zeros, zeroed), (self.skipped, skipped)):
            acc[layer] += v.sum(dtype=torch.float64) if valid is None else (v * valid).sum(dtype=torch.float64)

    def measure(self) -> dict:
        """results.json "sparsity" and "overhead" (one device read)."""
        from dart.engine.overhead import model_flops_per_token

        values = torch.stack([self.tokens, self.prompt_tokens]
                             + [z.to(self.device) for z in self.zeros + self.skipped]).tolist()
        n, prompt, zeros, skipped = values[0], values[1], values[2:self.L + 2], values[self.L + 2:]
        w = self.ffns[0].w
        achieved = [z / (n * self.rule.units(w)) for z in zeros] if n else None
        effective = [s / (n * w_elements(w)) for s in skipped] if n else None
        per_token = model_flops_per_token(self.model)
        D = w.w_down_t.shape[1]
        # per token and layer: |x| (or a score), the comparison, the select of each thresholded input; counting
        flops = {"thresholding": n * self.L * (self.I + (2 if w.gated else 1) * D) * 3, "counting": n * self.L * 4 * self.I}
        state = {"per_layer_state": self.L * 4 * (2 * D + self.I), "counters": (2 * self.L + 1) * 8}
        return {
            "achieved": None if achieved is None else sum(achieved) / self.L, "per_layer_achieved": achieved,
            "effective": None if effective is None else sum(effective) / self.L, "per_layer_effective": effective,
            "tokens": {"prompt": prompt, "sparse": n},
            "overhead": {
                "state_bytes": sum(state.values()), "state_breakdown": state,
                "engine_flops": sum(flops.values()), "engine_flops_breakdown": flops,
                "model_flops": per_token * n, "flops_ratio": sum(flops.values()) / (per_token * n) if n else None,
                "tokens_seen": n, "tokens_traced": 0.0, "mask_builds": 0, "mask_build_s": 0.0,
            },
        }


# ------------------------------------------------------------------------------------------------ the strategies
PROMPTS = ("dense", "sparse")

def _ignored(ranking) -> dict:
    return {} if ranking in (None, "magnitude") else {"ranking": ranking}


class PerTokenStrategy(Strategy):
    """A per-token method: the prompt dense, every continuation token its own mask. `dynamic`: evaluations score a
    continuation after its prompt (as decoding), not in one pass."""

    dynamic = True
    execution = "masked (every weight read: per-token masks need sparse GEMV kernels to skip reads)"

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

    def make_rule(self, model, tokenizer) -> Rule:
        raise NotImplementedError

    def attach(self, model, tokenizer=None) -> None:
        super().attach(model, tokenizer)
        t0 = time.perf_counter()
        rule = self.make_rule(model, tokenizer)
        if self.calibration_info is not None:
            self.calibration_info["seconds"] = round(time.perf_counter() - t0, 4)
        self.engine = PerTokenEngine(model, rule, self.prompt).attach()

    def detach(self) -> None:
        if self.engine is not None and self.model is not None:
            self._summary = self._measure()
            self.engine.detach()
        super().detach()

    def paused(self):
        return self.engine.paused()

    def _measure(self) -> dict[str, Any]:
        m = self.engine.measure()
        return {
            "sparsity": {"target": self.sparsity, "achieved": m["achieved"], "effective": m["effective"],
                         "effective_prefill": 0.0, "tokens": m["tokens"],
                         "unit": "FFN weight reads skipped (a sparse kernel's)", "execution": self.execution,
                         "per_layer": {"target": [self.sparsity] * self.engine.L, "achieved": m["per_layer_achieved"],
                                       "effective": m["per_layer_effective"]}},
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


def _weights(model) -> list:
    from dart.engine.adapters import adapter_for

    adapter = adapter_for(model)
    return [adapter.weights(adapter.ffn(layer)) for layer in adapter.layers(model)]


class Cats(PerTokenStrategy):
    name = "cats"

    def make_rule(self, model, tokenizer) -> Rule:
        from dart.strategies.calibration_stats import calibrate, quantile_threshold

        spec = self.calibration
        cal = calibrate(model, spec.sequences(tokenizer), values=("gate",), sample=spec.sample, seed=spec.seed)
        thresholds = torch.stack([quantile_threshold(v, self.sparsity) for v in cal.values["gate"]])
        below = torch.stack([(v < t).float().mean() for v, t in zip(cal.values["gate"], thresholds)])
        got = torch.stack([thresholds, below]).tolist()  # one read, at attach
        self.calibration_info = {"source": spec.source, "tokens": cal.tokens, "seq_len": spec.seq_len, "seed": spec.seed,
                                 "values_per_layer": cal.values["gate"][0].numel(), "thresholds": got[0],
                                 "calibration_sparsity": got[1]}
        weights = _weights(model)
        dtype = weights[0].w_down_t.dtype
        # each threshold is one of the calibration |g| values, computed in this dtype: the cast is exact
        return CatsRule([t.to(w.w_down_t.device, dtype) for t, w in zip(thresholds, weights)])


class Teal(PerTokenStrategy):
    name = "teal"

    def make_rule(self, model, tokenizer) -> Rule:
        from dart.strategies.calibration_stats import calibrate, quantile_threshold

        spec = self.calibration
        cal = calibrate(model, spec.sequences(tokenizer), values=("input", "down"), sample=spec.sample, seed=spec.seed)
        weights = _weights(model)
        dtype = weights[0].w_down_t.dtype
        t = {k: [quantile_threshold(v, self.sparsity) for v in cal.values[k]] for k in ("input", "down")}
        got = torch.stack([torch.stack(t["input"]), torch.stack(t["down"])]).tolist()
        self.calibration_info = {"source": spec.source, "tokens": cal.tokens, "seq_len": spec.seq_len, "seed": spec.seed,
                                 "values_per_layer": {k: cal.values[k][0].numel() for k in ("input", "down")},
                                 "thresholds_input": got[0], "thresholds_down": got[1]}
        on = lambda ts: [x.to(w.w_down_t.device, dtype) for x, w in zip(ts, weights)]  # noqa: E731  (exact casts)
        return TealRule(on(t["input"]), on(t["down"]))


class Wina(PerTokenStrategy):
    name = "wina"

    def make_rule(self, model, tokenizer) -> Rule:
        weights = _weights(model)
        col = lambda m: torch.linalg.vector_norm(m, dim=0, dtype=torch.float32)  # noqa: E731  (||W[:, i]||)
        norms_in = [[col(m) for m in w.w_in] for w in weights]  # w_in[i] is (I, D): input i is its column i
        norms_down = [torch.linalg.vector_norm(w.w_down_t, dim=1, dtype=torch.float32) for w in weights]  # (I,)
        self.calibration_info = None
        return WinaRule(norms_in, norms_down, self.sparsity)
