"""The per-token engine: every decoder layer's FFN replaced by one that applies a per-token rule
(dart.strategies.per_token_rules) to every token of a sparse forward, counting what it zeroed and skipped on the
device. A request's prompt runs dense (strategy.prompt=dense); decoding with the CPU kernels on runs each rule's fast
path on weights laid out K-major once, in place.
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
        self.original = original  # kept (not as a submodule) to restore on detach
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
            return getattr(self.__dict__["original"], name)

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

    def attach(self) -> "PerTokenEngine":
        self.patch.apply(begin=self._begin)  # dart.engine.patch.attached(model, "per_token") finds it from here on
        return self

    @torch.no_grad()
    def detach(self) -> None:
        from dart.runtime import release_memory

        self.patch.undo()
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


