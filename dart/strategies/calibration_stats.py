"""Calibration statistics for the input-independent baselines (docs/method.md sections 8 and 8a: static, CATS, TEAL)
and for DART's global prior (strategy.prior_mix): a text disjoint from every evaluation text (which one: the
strategy's CalibrationSpec, dart.strategies.calibration) runs dense through the model once, and per layer the
statistics a baseline needs are collected in fp32:

- `act_sq` (L, I): sum over the calibration tokens of a_tj^2, a = the FFN intermediate activation (the input of
  the down projection), so ||a_j|| = sqrt(act_sq_j);
- `values[name]`: per layer a sample of |.| of one FFN quantity: `gate` |g| (g = act(gate x) for gated FFNs, act(fc
  x) for plain ones: what CATS thresholds), `input` |x| (the FFN's input) and `down` |a| (the down projection's
  input: what TEAL thresholds); for TEAL as published (Llama-family attention) also `attn_in` (the input of q, k and
  v) and `attn_out` (the input of o).

The text is tokenized without special tokens (as the evaluations tokenize theirs), cut to exactly `tokens` tokens
and split into consecutive sequences of `seq_len` (the last one shorter when `seq_len` does not divide `tokens`),
one sequence per forward: deterministic and independent of any batch size. The hooks compute the FFN
activations a second time from the layer's input (as the model computes them, in its dtype), so the model is
untouched; this runs once per attach, never per request.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from dart.engine.adapters import FFNWeights, adapter_for
from dart.engine.allocation import uniform_keep
from dart.engine.masks import topk_mask
from dart.errors import ConfigError, choice_error

SCORES = ("act_norm", "wanda", "weight")


VALUES = ("gate", "input", "down", "attn_in", "attn_out")
ATTENTION_VALUES = ("attn_in", "attn_out")  # hooked on the attention projections (Llama family)


@dataclasses.dataclass
class Calibration:
    tokens: int
    act_sq: torch.Tensor | None = None  # (L, I) fp32, sum_t a_tj^2
    values: dict[str, list[torch.Tensor]] = dataclasses.field(default_factory=dict)  # per name, per layer, fp32 |.|

    @property
    def gate_values(self) -> list[torch.Tensor] | None:
        return self.values.get("gate")


# ---------------------------------------------------------------------------------------------------- the text
def calibration_sequences(tokenizer, text: str, tokens: int, seq_len: int, name: str = "the calibration text") -> list[torch.Tensor]:
    """The first `tokens` tokens of `text`, as 1-D LongTensors of at most `seq_len` tokens (this takes the text;
    which corpus it comes from is the strategy's CalibrationSpec: dart.strategies.calibration)."""
    if tokenizer is None:
        raise ConfigError("the calibration needs the model's tokenizer (strategy.attach(model, tokenizer))")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < tokens:
        raise ConfigError(
            f"strategy.calibration.tokens={tokens} is more than {name} holds with this tokenizer; allowed: 1..{len(ids)}"
        )
    return list(torch.tensor(ids[:tokens], dtype=torch.long).split(seq_len))


# ---------------------------------------------------------------------------------------------- the activations
def ffn_activations(w: FFNWeights, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, a) of one FFN input x (..., D): g = act(gate x) (gated) or act(fc x) (plain); a = g * (up x) or g."""
    if w.gated:
        (gate, up), (bg, bu) = w.w_in, w.b_in
        g = w.act(F.linear(x, gate, bg))
        return g, g * F.linear(x, up, bu)
    g = w.act(F.linear(x, w.w_in[0], w.b_in[0]))
    return g, g


def sample_counts(lengths: Sequence[int], width: int, sample: int) -> list[int]:
    """How many |g| values each sequence contributes per layer: all when the calibration holds at most `sample`
    values, else `sample` in all, spread over the sequences in proportion to their token counts."""
    total = sum(lengths) * width
    if total <= sample:
        return [n * width for n in lengths]
    cum, out = 0, []
    for n in lengths:
        before, cum = cum, cum + n * width
        out.append(sample * cum // total - sample * before // total)
    return out


def calibrated(model, sequences: Sequence[torch.Tensor], what: str, params: dict, compute: Callable[[], Any]) -> Any:
    """compute()'s result (something a strategy derives from a calibration pass over `sequences`: thresholds,
    neuron statistics) once per model and request, then from disk (dart.disk_cache): the key is the weights'
    fingerprint, the device type, the torch version, the sequences' token ids, `what` and `params` (everything
    else the result depends on). What is kept is what the strategy uses, never the raw samples (hundreds of MB
    at 1.5B), so a second job of a sweep starts in seconds."""
    import hashlib

    from dart.disk_cache import stored, weights_fingerprint

    ids = hashlib.sha256()
    for s in sequences:
        ids.update(s.to("cpu", torch.int64).contiguous().numpy().tobytes() + b"|")
    device = adapter_for(model).all_weights(model)[0].w_down_t.device
    identity = {"weights": weights_fingerprint(model), "device": device.type, "torch": torch.__version__,
                "sequences": ids.hexdigest(), "what": what, "params": params}
    got = stored("calibration", identity, compute)
    return _to(got, device)


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def activation_norms(model, sequences: Sequence[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(act_sq (L, I) fp32, calibration tokens): calibrate(norms=True)'s sums, kept on disk (calibrated)."""
    def compute() -> dict:
        cal = calibrate(model, sequences, norms=True)
        return {"act_sq": cal.act_sq, "tokens": cal.tokens}

    got = calibrated(model, sequences, "act_sq", {}, compute)
    return got["act_sq"], int(got["tokens"])


@torch.no_grad()
def calibrate(model, sequences: Sequence[torch.Tensor], norms: bool = False, gate_sample: int = 0, seed: int = 0,
              values: Sequence[str] = (), sample: int = 0) -> Calibration:
    """Run the dense model over the calibration sequences and collect, per layer, the activation sums of squares
    (norms=True) and/or, for each name in `values` (VALUES), a sample of `sample` of its |.| values (drawn uniformly,
    with replacement, by one generator seeded with `seed`; every value when the calibration holds no more than
    that). gate_sample=N is values=("gate",), sample=N. A progress line while a long one runs; strategies keep
    what they derive from it through `calibrated`."""
    from dart.progress import phase

    if gate_sample:
        values, sample = ("gate",), gate_sample
    unknown = [v for v in values if v not in VALUES]
    if unknown:
        raise choice_error("calibration value", unknown[0], VALUES)
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    weights = adapter.all_weights(model)
    L, (I, D) = len(layers), weights[0].w_in[0].shape
    device = weights[0].w_down_t.device
    act_sq = torch.zeros(L, I, dtype=torch.float32, device=device) if norms else None
    lengths = [s.numel() for s in sequences]
    attn = {}
    if any(v in ATTENTION_VALUES for v in values):
        from dart.strategies.teal_block import attention_linears, check_supported

        check_supported(model)
        attn = [attention_linears(layer) for layer in layers]
    widths = {"gate": I, "input": D, "down": I, "attn_in": D, "attn_out": attn[0]["o"].in_features if attn else 0}
    counts = {v: sample_counts(lengths, widths[v], sample) for v in values}
    parts: dict[str, list[list[torch.Tensor]]] = {v: [[] for _ in range(L)] for v in values}
    gen = torch.Generator(device=device).manual_seed(int(seed))
    current = {"seq": 0}

    def keep(name: str, l: int, t: torch.Tensor) -> None:
        got = t.reshape(-1).abs().float().to(device)
        n = counts[name][current["seq"]]
        if n < got.numel():
            got = got[torch.randint(got.numel(), (n,), generator=gen, device=device)]
        parts[name][l].append(got)

    def hook(l: int):
        def fn(module, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            g, a = ffn_activations(weights[l], x)
            if act_sq is not None:  # (a layer on another device than the first: its sums moved, once per pass)
                act_sq[l] += a.float().square().reshape(-1, I).sum(dim=0).to(device)
            for name, t in (("gate", g), ("input", x), ("down", a)):
                if name in counts:
                    keep(name, l, t)
            return None
        return fn

    def attn_hook(name: str, l: int):
        def fn(module, args):
            keep(name, l, args[0])
        return fn

    handles = [adapter.ffn(layer).register_forward_pre_hook(hook(l), with_kwargs=True) for l, layer in enumerate(layers)]
    for name, proj in (("attn_in", "q"), ("attn_out", "o")):
        if name in counts:
            handles += [attn[l][proj].register_forward_pre_hook(attn_hook(name, l)) for l in range(L)]
    try:
        with phase(f"calibration ({sum(lengths)} tokens of dense forwards)", len(sequences), unit="sequence") as step:
            for i, ids in enumerate(sequences):
                current["seq"] = i
                model(input_ids=ids.reshape(1, -1).to(device), use_cache=False)
                step()
    finally:
        for h in handles:
            h.remove()
    return Calibration(tokens=sum(lengths), act_sq=act_sq, values={v: [torch.cat(p) for p in parts[v]] for v in values})


# ------------------------------------------------------------------------------------------ static: the scores
def _row_norms(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t, dim=1, dtype=torch.float32)


def neuron_scores(kind: str, weights: Sequence[FFNWeights], act_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Static neuron scores (L, I) in fp32 (W_down is the (D, I) down projection, so W_down[:, j] = w_down_t[j]):

    act_norm: ||a_j||                          the L2 norm of neuron j's activation over the calibration tokens
    wanda:    ||a_j|| * ||W_down[:, j]||       Wanda (Sun et al. 2024) scores weight W_down[i, j] by
              |W_down[i, j]| * ||X_j|| with X_j = a_j, the down projection's j-th input; this is the L2 norm of
              those scores over neuron j's column
    weight:   gated: ||W_gate[j, :]|| * ||W_up[j, :]||  (GRIFFIN's weight-magnitude baseline; no data)
              plain: ||W_fc[j, :]|| * ||W_down[:, j]||   (the neuron's one input row times its output column)
    """
    if kind not in SCORES:
        raise choice_error("strategy.score", kind, SCORES)
    if kind == "weight":
        return torch.stack([
            _row_norms(w.w_in[0]) * (_row_norms(w.w_in[1]) if w.gated else _row_norms(w.w_down_t)) for w in weights
        ])
    if act_sq is None:
        raise ValueError(f"score {kind} needs calibration activations")
    norm = act_sq.float().sqrt()
    if kind == "act_norm":
        return norm
    return norm * torch.stack([_row_norms(w.w_down_t) for w in weights]).to(norm.device)


def static_masks(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """(L, I) bool: the k = floor((1 - sparsity) I) highest scores of every layer (the engine's uniform top-k)."""
    L, I = scores.shape
    return topk_mask(scores[:, None, :], uniform_keep(L, I, sparsity))[:, 0]


# ------------------------------------------------------------------------------------------- cats: thresholds
def quantile_threshold(values: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The threshold t (0-d fp32) below which a `sparsity` fraction of `values` fall: with n values and
    k = floor(sparsity n), t is the (k+1)-th smallest value, so exactly k values are < t (ties aside); t = 0 when
    k = 0 (nothing is zeroed). An exact order statistic by torch.kthvalue: no size limit (torch.quantile refuses
    inputs above 2^24 elements) and no interpolation, so t is one of the values themselves and stays exact when
    compared in the model's dtype."""
    v = values.reshape(-1).float()
    k = order_index(v.numel(), sparsity)
    if k <= 0:
        return torch.zeros((), dtype=torch.float32, device=v.device)
    if k >= v.numel():
        return torch.full((), float("inf"), dtype=torch.float32, device=v.device)
    return v.kthvalue(k + 1).values


def order_index(n: int, sparsity: float) -> int:
    """k = floor(sparsity n): how many of n values a threshold at `sparsity` puts below it (quantile_threshold's rule;
    sparsity >= 1: all of them, the threshold +inf)."""
    return math.floor(float(sparsity) * n + 1e-9)


def sorted_threshold(sorted_values: torch.Tensor, sparsity: float) -> float:
    """quantile_threshold of values already sorted ascending (fp32), as a float: the (k+1)-th smallest, 0 for k = 0,
    +inf for k >= n. TEAL's greedy asks for thousands of thresholds of one layer; a sort once, then an index."""
    n = sorted_values.numel()
    k = order_index(n, sparsity)
    return 0.0 if k <= 0 else (float("inf") if k >= n else float(sorted_values[k]))
