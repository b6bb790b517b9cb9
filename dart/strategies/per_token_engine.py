"""The per-token engine: every decoder layer's FFN replaced by one that applies a per-token rule
(dart.strategies.per_token_rules) to every token of a sparse forward, counting what it zeroed and skipped on the
device. A request's prompt runs dense (strategy.prompt=dense); decoding with the CPU kernels on runs each rule's fast
path on weights laid out K-major once, in place. A rule with attention thresholds (TEAL as published) also has every
layer's q, k, v and o projections replaced while attached (dart.strategies.per_token_attention), counted apart.
"""
from __future__ import annotations

import torch
from torch import nn

from dart import kernels
from dart.strategies.per_token_rules import Rule, w_elements


# ------------------------------------------------------------------------------------------------ the engine
class PerTokenFFN(nn.Module):
    """Replaces one decoder layer's FFN while a per-token method is attached."""

    def __init__(self, original: nn.Module, weights, index: int, engine: "PerTokenEngine"):
        super().__init__()
        self.original = original  # kept to restore on detach (a submodule: its parameters are the model's own)
        object.__setattr__(self, "_engine", engine)
        self.w = weights
        self.index = index
        self.kmajor = False  # laid out for the kernels' fast path (once, in place)

    def lay_out(self) -> None:
        """The weights K-major for the rule's fast path (once, in place: dart.engine.adapters.kmajor_weights)."""
        if not self.kmajor:
            from dart.engine.adapters import kmajor_weights

            self.w = kmajor_weights(self._engine.adapter, self.original, inputs=self._engine.rule.kmajor_inputs)
            self.kmajor = True

    def __getattr__(self, name):  # keep attribute access of the wrapped module working (e.g. .gate_proj)
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "original":
                raise
            return getattr(super().__getattr__("original"), name)  # (a submodule: nn.Module keeps it in _modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self._engine
        if e.is_paused or not e.sparse:
            from dart.engine.ffn import down, intermediate

            return down(self.w, intermediate(self.w, x))
        if e.rule.can_fast(self.w, x):
            self.lay_out()
            out, zeroed, skipped = e.rule.fast(self.index, self.w, x)
        else:
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
        self.patch = Patch(model, self.adapter, self.layers, self.ffns, "per_token", self)
        self.attention: list[dict] | None = None  # per layer {q, k, v, o: SparseInputLinear} while attached
        self.attn_skipped = [torch.zeros((), dtype=torch.float64, device=d) for d in self.devices]

    def attach(self) -> "PerTokenEngine":
        from dart.strategies import per_token_attention

        self.patch.apply(begin=self._begin)  # dart.engine.patch.attached(model, "per_token") finds it from here on
        if getattr(self.rule, "attn_t", None) is not None:
            self.attention = [per_token_attention.install(self.adapter.attention(layer), l, self)
                              for l, layer in enumerate(self.layers)]
        return self

    @torch.no_grad()
    def detach(self) -> None:
        from dart.runtime import release_memory

        from dart.strategies import per_token_attention

        self.patch.undo()
        if self.attention is not None:
            for layer, wrappers in zip(self.layers, self.attention):
                per_token_attention.remove(self.adapter.attention(layer), wrappers)
            self.attention = None
        if any(f.kmajor for f in self.ffns):  # the K-major copies are freed: their memory back to the system
            for f in self.ffns:
                f.w, f.kmajor = None, False
            release_memory()

    def lay_out(self) -> None:
        """Every layer's weights laid out for the fast path now (a bench does it before it times anything; decoding
        does it at its first sparse step otherwise)."""
        from dart.runtime import release_memory

        for f in self.ffns:
            f.lay_out()
        for wrappers in self.attention or []:
            for w in wrappers.values():
                w.lay_out()
        release_memory()  # the row-major copies just freed

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
        mask = kwargs.get("attention_mask")
        self.begin_forward(B, T, past, mask[:, -T:] if torch.is_tensor(mask) and mask.dim() == 2 else None)
        return None

    def begin_forward(self, B: int, T: int, past: int, valid: torch.Tensor | None = None) -> None:
        """A forward of B rows of T tokens after `past` cached positions (valid: (B, T), 0 at padding) begins: dense
        if it is a prompt's, sparse otherwise; its tokens counted. The model's forward hook calls it, and a decode
        loop that runs the layers itself (dart.bench.lean)."""
        if self.is_paused:
            return
        self.sparse = self.prompt == "sparse" or (past > 0 and not self.in_prompt)
        self._valid = valid.to(torch.float32) if valid is not None else None
        self._valid_on = {}
        n = float(B * T) if self._valid is None else self._valid.sum()
        if self.sparse:
            self.tokens += n
            self.forwards += 1
        else:
            self.prompt_tokens += n

    def count(self, layer: int, zeroed: torch.Tensor, skipped: torch.Tensor) -> None:
        """Add a forward's (B, T) counts of one layer's FFN over its evaluated tokens (on the device: no host sync)."""
        for acc, v in ((self.zeros, zeroed), (self.skipped, skipped)):
            acc[layer] += self._sum(v)

    def count_attention(self, layer: int, skipped: torch.Tensor) -> None:
        """Add a forward's (B, T) count of attention weights one projection of one layer skipped."""
        self.attn_skipped[layer] += self._sum(skipped)

    def _sum(self, v: torch.Tensor) -> torch.Tensor:
        """The sum of a (B, T) count over the forward's evaluated (non-padding) tokens, in fp64."""
        valid = self._valid
        if valid is not None and valid.device != v.device:  # a layer on another device: the mask moved once
            valid = self._valid_on.get(v.device)
            if valid is None:
                valid = self._valid_on[v.device] = self._valid.to(v.device)
        return v.sum(dtype=torch.float64) if valid is None else (v * valid).sum(dtype=torch.float64)

    def _attention_weights(self) -> int:
        """One layer's q, k, v and o weights (the attention projections every method here reads per token)."""
        from dart.strategies.per_token_attention import ATTENTION

        attn = self.adapter.attention(self.layers[0])
        mods = [getattr(attn, f"{p}_proj", None) for p in ATTENTION]
        if any(m is None for m in mods):  # another architecture's attention: the FFN alone
            return 0
        return sum(m.in_features * m.out_features for m in mods)

    def measure(self) -> dict:
        """results.json "sparsity" and "overhead" (one device read)."""
        from dart.engine.overhead import model_flops_per_token

        values = torch.stack([self.tokens, self.prompt_tokens]
                             + [z.to(self.device) for z in self.zeros + self.skipped + self.attn_skipped]).tolist()
        L = self.L
        n, prompt, zeros = values[0], values[1], values[2:L + 2]
        skipped, attn_skipped = values[L + 2:2 * L + 2], values[2 * L + 2:]
        w = self.ffns[0].w
        achieved = [z / (n * self.rule.units(w)) for z in zeros] if n else None
        effective = [s / (n * w_elements(w)) for s in skipped] if n else None
        # over all seven projections' weight reads (attention and FFN: TEAL's model-wide figure)
        attn_w = self._attention_weights()
        effective_model = ([(s + a) / (n * (w_elements(w) + attn_w)) for s, a in zip(skipped, attn_skipped)]
                         if n else None)
        effective_attention = sum(attn_skipped) / (n * attn_w * L) if n and attn_w else None
        per_token = model_flops_per_token(self.model)
        D = w.w_down_t.shape[1]
        # per token and layer: |x| (or a score), the comparison, the select of each thresholded input; counting
        flops = {"thresholding": n * self.L * (self.I + (2 if w.gated else 1) * D) * 3, "counting": n * self.L * 4 * self.I}
        state = {"per_layer_state": self.L * 4 * (2 * D + self.I), "counters": (2 * self.L + 1) * 8}
        return {
            "achieved": None if achieved is None else sum(achieved) / self.L, "per_layer_achieved": achieved,
            "effective": None if effective is None else sum(effective) / self.L, "per_layer_effective": effective,
            "effective_model": None if effective_model is None else sum(effective_model) / self.L,
            "per_layer_effective_model": effective_model, "effective_attention": effective_attention,
            "tokens": {"prompt": prompt, "sparse": n},
            "overhead": {
                "state_bytes": sum(state.values()), "state_breakdown": state,
                "engine_flops": sum(flops.values()), "engine_flops_breakdown": flops,
                "model_flops": per_token * n, "flops_ratio": sum(flops.values()) / (per_token * n) if n else None,
                "tokens_seen": n, "tokens_traced": 0.0, "mask_builds": 0, "mask_build_s": 0.0,
            },
        }


