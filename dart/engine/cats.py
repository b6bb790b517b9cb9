"""CATS (Lee et al., COLM 2024, "CATS: Contextually-Aware Thresholding for Sparsity"): per-token activation
sparsity with one calibrated threshold t_l per layer (docs/method.md section 8).

    gated FFN:  g = act(gate x);  out = down((g * [|g| >= t_l]) * up x)
    plain FFN:  g = act(fc x);    out = down(g * [|g| >= t_l])

Every token picks its own neurons, so no mask is ever reused and nothing is compacted: gate, up and down still
run dense (CATS and TEAL get their speed from sparse GEMV kernels, which this project does not have). It is an
accuracy baseline. The thresholds come from dart.engine.calibration.quantile_threshold.

Achieved sparsity = the fraction of zero entries of the thresholded g over the evaluated tokens (padding left
out), per layer: a per-forward reduction on the device, read once by `measure()`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dart.engine.adapters import FFNWeights, adapter_for, forward_input
from dart.engine.patch import Patch


class ThresholdFFN(nn.Module):
    """Replaces one decoder layer's FFN while CATS is attached."""

    def __init__(self, original: nn.Module, weights: FFNWeights, index: int, engine: "ThresholdEngine"):
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
        w, e = self.w, self._engine
        g = w.act(F.linear(x, w.w_in[0], w.b_in[0]))  # gate (gated) or fc (plain)
        if not e.is_paused:
            g = torch.where(g.abs() >= e.t[self.index], g, 0.0)
            e.count(self.index, g)
        a = g * F.linear(x, w.w_in[1], w.b_in[1]) if w.gated else g
        out = torch.matmul(a, w.w_down_t)
        return out if w.b_down is None else out + w.b_down


class ThresholdEngine:
    def __init__(self, model, thresholds: torch.Tensor):
        self.model = model
        self.adapter = adapter_for(model)
        self.layers = self.adapter.layers(model)
        self.L = len(self.layers)
        if tuple(thresholds.shape) != (self.L,):
            raise ValueError(f"need one threshold per layer ({self.L}), got shape {tuple(thresholds.shape)}")
        self.ffns = [ThresholdFFN(self.adapter.ffn(layer), self.adapter.weights(self.adapter.ffn(layer)), l, self)
                     for l, layer in enumerate(self.layers)]
        self.I = self.ffns[0].w.w_in[0].shape[0]
        ref = self.ffns[0].w.w_down_t
        self.device, self.dtype = ref.device, ref.dtype
        self.devices = [f.w.w_down_t.device for f in self.ffns]  # a model spread over GPUs: each layer's own
        # each threshold is one of the calibration |g| values, computed in this dtype: the cast is exact
        self.t = [v.to(d, self.dtype) for v, d in zip(thresholds, self.devices)]
        self.thresholds = thresholds.float().to(self.device)
        self.zeros = [torch.zeros((), dtype=torch.float64, device=d) for d in self.devices]  # zeroed entries per layer
        self._valid_on: dict = {}
        self.tokens = torch.zeros((), dtype=torch.float64, device=self.device)  # evaluated (non-padding) tokens
        self.forwards = 0
        self._valid: torch.Tensor | None = None  # (B, T) fp32 of the running forward, None = every token
        self.patch = Patch(model, self.adapter, self.layers, self.ffns)

    def attach(self) -> "ThresholdEngine":
        self.patch.apply(begin=self._begin)
        return self

    @torch.no_grad()
    def detach(self) -> None:
        self.patch.undo()

    def paused(self):
        """Run dense (no thresholds, nothing counted) inside the block: the dense reference."""
        return self.patch.paused()

    @property
    def is_paused(self) -> bool:
        return self.patch.is_paused

    def _begin(self, module, args, kwargs):
        if self.is_paused:
            return None
        B, T = forward_input(args, kwargs).shape[:2]
        mask = kwargs.get("attention_mask")
        self._valid = mask[:, -T:].to(torch.float32) if torch.is_tensor(mask) and mask.dim() == 2 else None
        self._valid_on = {}
        self.tokens += float(B * T) if self._valid is None else self._valid.sum()
        self.forwards += 1
        return None

    def count(self, layer: int, g: torch.Tensor) -> None:
        zeros = (g == 0).sum(dim=-1)  # (B, T)
        if self._valid is None:
            self.zeros[layer] += zeros.sum()
            return
        valid = self._valid
        if valid.device != g.device:  # a layer on another device: the forward's padding mask, moved once
            valid = self._valid_on.get(g.device)
            if valid is None:
                valid = self._valid_on[g.device] = self._valid.to(g.device)
        self.zeros[layer] += (zeros * valid).sum(dtype=torch.float64)

    def measure(self, model) -> dict:
        """results.json "sparsity" and "overhead" (one device read)."""
        from dart.engine.overhead import model_flops_per_token

        values = torch.stack([self.tokens] + [z.to(self.device) for z in self.zeros]).tolist()
        n, zeros = values[0], values[1:]
        per_layer = [z / (n * self.I) for z in zeros] if n else None
        state = {"thresholds": self.L * 4, "counters": (self.L + 1) * 8}
        # per token, layer and neuron: |g|, the comparison, the select (thresholding); == 0 and the sum (counting)
        flops = {"thresholding": n * self.L * self.I * 3, "counting": n * self.L * self.I * 2}
        per_token = model_flops_per_token(model)
        return {
            "achieved": None if per_layer is None else sum(per_layer) / self.L,
            "per_layer": per_layer,
            "overhead": {
                "state_bytes": sum(state.values()), "state_breakdown": state,
                "engine_flops": sum(flops.values()), "engine_flops_breakdown": flops,
                "model_flops": per_token * n, "flops_ratio": sum(flops.values()) / (per_token * n) if n else None,
                "tokens_seen": n, "tokens_traced": 0.0, "mask_builds": 0, "mask_build_s": 0.0,
            },
        }
