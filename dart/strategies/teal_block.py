"""The block-output error TEAL's greedy allocation minimises (dart.strategies.teal_greedy), for one Llama-family
decoder layer (Llama, Mistral, Qwen2/3, SmolLM2: TEAL's own code supports Llama and Mistral), and the driver that runs
the greedy layer by layer on the dense model's layer inputs.

`BlockEvaluator` computes only what the error reads, exactly as the whole layer would: the error covers the last
`last_fraction` of the positions and only the last half is sparse, so the first half's keys and values are computed
once (dense), q, o and the FFN run on the error's positions only, and a trial that changes one projection reuses
what it does not change (the attention output for a gate / up / down step; gate's and up's products for the other's
and down's). `reference_output` runs the model's own layer with the inputs thresholded by hooks: the exact path the
evaluator is tested against.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from dart.errors import ConfigError
from dart.strategies.teal_greedy import INPUT_OF, PROJECTIONS, greedy, projection_weights

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


def check_supported(model) -> None:
    kind = model.config.model_type
    if kind not in SUPPORTED:
        raise ConfigError(f"strategy=teal_published sparsifies attention projections of {', '.join(SUPPORTED)} "
                          f"models (TEAL's code: Llama and Mistral), not {kind!r}; strategy=teal runs on any model")


def attention_linears(layer) -> dict[str, torch.nn.Linear]:
    a = layer.self_attn
    return {"q": a.q_proj, "k": a.k_proj, "v": a.v_proj, "o": a.o_proj}


def sizes(layer) -> dict[str, int]:
    """Each of the seven projections' parameter count (weights only)."""
    m = layer.mlp
    mods = {**attention_linears(layer), "gate": m.gate_proj, "up": m.up_proj, "down": m.down_proj}
    return {p: mods[p].weight.numel() for p in PROJECTIONS}


def thresholded(x: torch.Tensor, t: float) -> torch.Tensor:
    """x where |x| >= t, else 0 (t = 0: x; t = inf: zeros)."""
    return torch.where(x.abs() >= t, x, 0.0)


def block_error(target: torch.Tensor, new: torch.Tensor) -> float:
    """TEAL's error of two block outputs (B, T', D) already cut to the positions it reads: the L2 norm over positions,
    averaged over the batch and the hidden dimension (in fp32)."""
    return float(torch.linalg.vector_norm((target.float() - new.float()), dim=1).mean())


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class BlockEvaluator:
    """TEAL's block error of one layer for given per-projection sparsities (see the module)."""

    def __init__(self, layer, config, x: torch.Tensor, position_embeddings, threshold: Callable[[str, float], float],
                 last_fraction: float):
        B, T, D = x.shape  # last_fraction in (0, 0.5]: the error reads only positions that run sparse (GreedySpec)
        self.layer, self.attn, self.mlp = layer, layer.self_attn, layer.mlp
        self.threshold = threshold
        self.H, self.Hkv = config.num_attention_heads, config.num_key_value_heads
        self.hd = getattr(config, "head_dim", None) or D // self.H
        self.half = T - T // 2  # positions >= half run sparse (TEAL: the last T // 2 of a prompt)
        self.s0 = int(T * (1 - last_fraction))  # the error reads positions >= s0
        cos, sin = position_embeddings
        self.cos, self.sin = cos[:, None], sin[:, None]  # (B, 1, T, hd)
        with torch.no_grad():
            h = layer.input_layernorm(x)
            self.h_sparse, self.h_err, self.res = h[:, self.half:], h[:, self.s0:], x[:, self.s0:]
            self.kv_dense = {p: self._heads(p, h[:, :self.half], 0) for p in ("k", "v")}
            Tq = T - self.s0
            self.mask = torch.ones(Tq, T, dtype=torch.bool, device=x.device).tril(self.s0)
            self.memo: dict = {}
            self.target = self.output({p: 0.0 for p in PROJECTIONS})

    def _t(self, p: str, s: float) -> float:
        return self.threshold(p, s)

    def _heads(self, p: str, h: torch.Tensor, start: int) -> torch.Tensor:
        """Projection p (q, k or v) of h (positions start..), as heads (B, heads, T', hd), q and k rotated."""
        a = self.attn
        lin = {"q": a.q_proj, "k": a.k_proj, "v": a.v_proj}[p]
        B, Tn, _ = h.shape
        y = lin(h).view(B, Tn, -1, self.hd)
        if p == "q" and hasattr(a, "q_norm"):
            y = a.q_norm(y)
        if p == "k" and hasattr(a, "k_norm"):
            y = a.k_norm(y)
        y = y.transpose(1, 2)
        if p == "v":
            return y
        return _rotate(y, self.cos[:, :, start:start + Tn], self.sin[:, :, start:start + Tn])

    def _kv(self, p: str, s: float) -> torch.Tensor:
        key = (p, s)
        if key not in self.memo:
            sparse = self._heads(p, thresholded(self.h_sparse, self._t(p, s)), self.half)
            self.memo[key] = torch.cat([self.kv_dense[p], sparse], dim=2)
        return self.memo[key]

    def _attention(self, s: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(the residual after attention, the FFN's input) on the error's positions."""
        key = ("attn", s["q"], s["k"], s["v"], s["o"])
        if key not in self.memo:
            q = self._heads("q", thresholded(self.h_err, self._t("q", s["q"])), self.s0)
            o = F.scaled_dot_product_attention(q, self._kv("k", s["k"]), self._kv("v", s["v"]), attn_mask=self.mask,
                                               enable_gqa=True, scale=getattr(self.attn, "scaling", None))
            B, _, Tq, _ = o.shape
            o = o.transpose(1, 2).reshape(B, Tq, -1)
            r1 = self.res + self.attn.o_proj(thresholded(o, self._t("o", s["o"])))
            self.memo[key] = (r1, self.layer.post_attention_layernorm(r1))
        return self.memo[key]

    def _product(self, akey: tuple, p: str, s: float, m: torch.Tensor) -> torch.Tensor:
        key = (akey, p, s)
        if key not in self.memo:
            lin = self.mlp.gate_proj if p == "gate" else self.mlp.up_proj
            y = lin(thresholded(m, self._t(p, s)))
            self.memo[key] = self.mlp.act_fn(y) if p == "gate" else y
        return self.memo[key]

    @torch.no_grad()
    def output(self, s: dict) -> torch.Tensor:
        """The block's output on the error's positions at sparsities s."""
        akey = ("attn", s["q"], s["k"], s["v"], s["o"])
        r1, m = self._attention(s)
        a = self._product(akey, "gate", s["gate"], m) * self._product(akey, "up", s["up"], m)
        return r1 + self.mlp.down_proj(thresholded(a, self._t("down", s["down"])))

    def error(self, s: dict) -> float:
        from dart import signals

        signals.check()  # a stop signal ends the allocation within one trial (it runs no embedding forward)
        return block_error(self.target, self.output(s))

    def committed(self, s: dict) -> None:
        """Keep only what the state s reuses (a step's other trials are dropped)."""
        akey = ("attn", s["q"], s["k"], s["v"], s["o"])
        keep = {("k", s["k"]), ("v", s["v"]), akey, (akey, "gate", s["gate"]), (akey, "up", s["up"])}
        self.memo = {k: v for k, v in self.memo.items() if k in keep}


@torch.no_grad()
def reference_output(layer, x: torch.Tensor, position_embeddings, thresholds: dict[str, float],
                     last_fraction: float) -> torch.Tensor:
    """The model's own decoder layer on x with every projection's input thresholded on the last T // 2 positions
    (forward pre-hooks), cut to the error's positions: the exact path BlockEvaluator.output computes faster."""
    B, T, _ = x.shape
    half = T - T // 2
    mods = {**attention_linears(layer), "gate": layer.mlp.gate_proj, "up": layer.mlp.up_proj,
            "down": layer.mlp.down_proj}

    def hook(t: float):
        def fn(module, args):
            y = args[0]
            y = torch.cat([y[:, :half], thresholded(y[:, half:], t)], dim=1)
            return (y,) + tuple(args[1:])
        return fn

    handles = [mods[p].register_forward_pre_hook(hook(thresholds[p])) for p in PROJECTIONS]
    try:
        mask = torch.full((T, T), float("-inf"), dtype=x.dtype, device=x.device).triu(1)[None, None]
        out = layer(x, attention_mask=mask, position_embeddings=position_embeddings)
        out = out[0] if isinstance(out, tuple) else out
    finally:
        for h in handles:
            h.remove()
    return out[:, int(T * (1 - last_fraction)):]


@torch.no_grad()
def layer_inputs(model, ids: torch.Tensor) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Every decoder layer's dense input for the batch ids (B, T), and the rotary (cos, sin) of positions 0..T-1."""
    layers = list(model.model.layers)
    got: list[torch.Tensor | None] = [None] * len(layers)

    def hook(l: int):
        def fn(module, args, kwargs):
            got[l] = (args[0] if args else kwargs["hidden_states"]).detach()
        return fn

    handles = [layer.register_forward_pre_hook(hook(l), with_kwargs=True) for l, layer in enumerate(layers)]
    try:
        model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    pos = torch.arange(ids.shape[1], device=ids.device)[None].expand(ids.shape[0], -1)
    cos, sin = model.model.rotary_emb(got[0], pos)
    return got, (cos, sin)


def allocate(model, ids: torch.Tensor, threshold: Callable[[int, str, float], float], step: float, until: float,
             last_fraction: float, progress: Callable[[], None] | None = None) -> list[list[dict[str, float]]]:
    """TEAL's greedy trajectory of every layer (dart.strategies.teal_greedy.greedy), on the dense layer inputs of the
    calibration batch ids (B, T); threshold(layer, projection, sparsity) gives a projection's input threshold."""
    check_supported(model)
    inputs, pe = layer_inputs(model, ids)
    out = []
    for l, layer in enumerate(model.model.layers):
        ev = BlockEvaluator(layer, model.config, inputs[l], pe, lambda p, s, l=l: threshold(l, p, s), last_fraction)
        out.append(greedy(ev.error, projection_weights(sizes(layer)), until, step, committed=ev.committed))
        inputs[l] = None  # freed as the pass goes
        if progress is not None:
            progress()
    return out


__all__ = ["BlockEvaluator", "INPUT_OF", "allocate", "block_error", "check_supported", "reference_output"]
