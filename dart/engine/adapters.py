"""Architecture adapters: where a model keeps its decoder layers, FFNs, the residual stream entering the FFN,
what the FFN adds back, the attention output the drift detector watches, and the input embedding.

Every FFN is brought into one canonical, neuron-major view (neuron j = row j of every tensor):
    gated:  a = act(x @ w_gate.T) * (x @ w_up.T);   out = a @ w_down_t
    plain:  a = act(x @ w_fc.T + b_fc);             out = a @ w_down_t + b_down
The canonical tensors share storage with the model's own parameters, so pruning by prefix is a slice and
reordering neurons in place reorders the model itself. The input projections are (I, D) row-major (a prefix of k
neurons is one contiguous block). A Linear down projection keeps its own (D, I) row-major layout and w_down_t is
its transposed view: a prefix is the first k columns of every row, which CPU GEMV kernels read at full bandwidth
(measured, bf16, 2 cores: 24-29 GB/s), where a contiguous (I, D) copy read as `a @ W` runs at half that (15 GB/s).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from dart.errors import ConfigError


@dataclasses.dataclass
class FFNWeights:
    gated: bool
    w_in: list[torch.Tensor]  # gated: [gate, up]; plain: [fc]; each (I, D), contiguous
    b_in: list[torch.Tensor | None]  # per w_in, (I,) or None
    w_down_t: torch.Tensor  # (I, D): contiguous (GPT-2's Conv1D), or the transposed view of a (D, I) Linear weight
    b_down: torch.Tensor | None  # (D,)
    act: Callable[[torch.Tensor], torch.Tensor]

    @property
    def neuron_major(self) -> list[torch.Tensor]:
        """Every tensor whose first dimension indexes neurons (permuted together when compacting)."""
        return [*self.w_in, *(b for b in self.b_in if b is not None), self.w_down_t]


def _down_view(param: nn.Parameter) -> torch.Tensor:
    """The (I, D) neuron-major view of a Linear down projection's (D, I) weight, made contiguous first if it is not
    (in place, same bytes): row j of the view is column j of the weight."""
    if not param.data.is_contiguous():
        param.data = param.data.contiguous()
    return param.data.t()


def _neuron_major_view(param: nn.Parameter, transposed: bool) -> torch.Tensor:
    """The (I, D) contiguous tensor behind `param`; re-lays the parameter out if needed (in place, same bytes)."""
    if not transposed:
        return param.data if param.data.is_contiguous() else _relayout(param, param.data.contiguous(), False)
    t = param.data.t()
    if t.is_contiguous():
        return t
    return _relayout(param, t.contiguous(), True)


def _relayout(param: nn.Parameter, neuron_major: torch.Tensor, transposed: bool) -> torch.Tensor:
    param.data = neuron_major.t() if transposed else neuron_major
    return neuron_major


def forward_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The (B, T, ...) input of a causal LM's forward (input_ids, inputs_embeds, or the first positional)."""
    x = kwargs.get("input_ids")
    if x is None:
        x = kwargs.get("inputs_embeds")
    if x is None and args:
        x = args[0]
    return x


@torch.no_grad()
def kmajor_weights(adapter: "Adapter", ffn: nn.Module, inputs: bool = True) -> FFNWeights:
    """The FFN laid out in place for sparse-input decoding (dart.kernels): the down projection K-major, one contiguous
    row of D per neuron (w_down_t contiguous), and with `inputs` gate and up too, one contiguous row of I per input
    channel (w_in[i].t() contiguous). The same bytes, moved one tensor at a time (no second copy of the model); the
    canonical views of the new layout. restore_ffn puts the row-major layout back. GPT-2's Conv1D weights already
    are K-major."""
    w = adapter.weights(ffn)
    params = adapter.linear_params(ffn)
    if params is None:
        return w
    ins, down = params
    if inputs:
        for p in ins:
            p.data = p.data.t().contiguous().t()
    down.data = down.data.t().contiguous().t()
    return dataclasses.replace(w, w_in=[p.data for p in ins] if inputs else w.w_in, w_down_t=down.data.t())


def restore_ffn(adapter: "Adapter", layer: nn.Module, original: nn.Module) -> None:
    """Put a layer's original FFN back, and undo the canonical re-layout: bit for bit the original model."""
    adapter.set_ffn(layer, original)
    for p in original.parameters():
        if not p.data.is_contiguous():
            p.data = p.data.contiguous()


class Adapter:
    """Base adapter; subclasses name the modules of one architecture family."""

    families: tuple[str, ...] = ()
    gated = True

    def layers(self, model) -> list[nn.Module]:
        return list(model.model.layers)

    def ffn(self, layer) -> nn.Module:
        return layer.mlp

    def set_ffn(self, layer, module: nn.Module) -> None:
        layer.mlp = module

    def attention(self, layer) -> nn.Module:
        return layer.self_attn

    def attention_width(self, model, layer) -> int:
        """Width of a layer's self-attention output (the drift detector's signal per monitored layer)."""
        attn = self.attention(layer)
        for name in ("o_proj", "c_proj", "dense"):
            mod = getattr(attn, name, None)
            if mod is not None:
                w = mod.weight
                return w.shape[0] if isinstance(mod, nn.Linear) else w.shape[1]
        return model.get_input_embeddings().weight.shape[1]

    def residual_in(self, layer) -> nn.Module:
        """Module whose INPUT is the residual stream after attention (the FFN's residual input)."""
        return layer.post_attention_layernorm

    def ffn_added(self, layer) -> nn.Module | None:
        """Module whose OUTPUT is what the FFN adds to the residual (None: the FFN's own output)."""
        return None

    def embedding(self, model) -> torch.Tensor:
        return model.get_input_embeddings().weight

    def intermediate_size(self, model) -> int:
        return self.weights(self.ffn(self.layers(model)[0])).w_in[0].shape[0]

    def weights(self, ffn) -> FFNWeights:
        raise NotImplementedError

    def all_weights(self, model) -> list[FFNWeights]:
        """Every layer's FFN weights, first layer first."""
        return [self.weights(self.ffn(layer)) for layer in self.layers(model)]

    def linear_params(self, ffn) -> tuple[list[nn.Parameter], nn.Parameter] | None:
        """The FFN's input and down projections' Linear weight parameters (None: not Linear layers)."""
        return None


class LlamaAdapter(Adapter):
    """Gated FFNs with gate_proj/up_proj/down_proj: Llama, Mistral, Qwen2, Qwen3, SmolLM2, Gemma/Gemma3."""

    families = ("llama", "mistral", "qwen2", "qwen3", "gemma")

    def weights(self, ffn) -> FFNWeights:
        for name in ("gate_proj", "up_proj", "down_proj"):
            if not isinstance(getattr(ffn, name, None), nn.Linear):
                raise ConfigError(f"{type(ffn).__name__} has no Linear {name}: not a gated FFN this adapter knows")
        b = [ffn.gate_proj.bias, ffn.up_proj.bias]
        return FFNWeights(
            gated=True,
            w_in=[_neuron_major_view(ffn.gate_proj.weight, False), _neuron_major_view(ffn.up_proj.weight, False)],
            b_in=[x.data if x is not None else None for x in b],
            w_down_t=_down_view(ffn.down_proj.weight),
            b_down=ffn.down_proj.bias.data if ffn.down_proj.bias is not None else None,
            act=ffn.act_fn,
        )

    def linear_params(self, ffn):
        return [ffn.gate_proj.weight, ffn.up_proj.weight], ffn.down_proj.weight


class Gemma3Adapter(LlamaAdapter):
    families = ("gemma2", "gemma3_text")

    def residual_in(self, layer):
        return layer.pre_feedforward_layernorm

    def ffn_added(self, layer):
        return layer.post_feedforward_layernorm


class GPT2Adapter(Adapter):
    """GPT-2: Conv1D c_fc (D, I) and c_proj (I, D), with biases."""

    families = ("gpt2",)
    gated = False

    def layers(self, model):
        return list(model.transformer.h)

    def attention(self, layer):
        return layer.attn

    def residual_in(self, layer):
        return layer.ln_2

    def weights(self, ffn) -> FFNWeights:
        return FFNWeights(
            gated=False,
            w_in=[_neuron_major_view(ffn.c_fc.weight, True)],
            b_in=[ffn.c_fc.bias.data],
            w_down_t=_neuron_major_view(ffn.c_proj.weight, False),
            b_down=ffn.c_proj.bias.data,
            act=ffn.act,
        )


class GPTNeoXAdapter(Adapter):
    """GPT-NeoX / Pythia: Linear dense_h_to_4h and dense_4h_to_h, with biases."""

    families = ("gpt_neox",)
    gated = False

    def layers(self, model):
        return list(model.gpt_neox.layers)

    def attention(self, layer):
        return layer.attention

    def weights(self, ffn) -> FFNWeights:
        return FFNWeights(
            gated=False,
            w_in=[_neuron_major_view(ffn.dense_h_to_4h.weight, False)],
            b_in=[ffn.dense_h_to_4h.bias.data if ffn.dense_h_to_4h.bias is not None else None],
            w_down_t=_down_view(ffn.dense_4h_to_h.weight),
            b_down=ffn.dense_4h_to_h.bias.data if ffn.dense_4h_to_h.bias is not None else None,
            act=ffn.act,
        )

    def linear_params(self, ffn):
        return [ffn.dense_h_to_4h.weight], ffn.dense_4h_to_h.weight


ADAPTERS: dict[str, Adapter] = {}
for _cls in (LlamaAdapter, Gemma3Adapter, GPT2Adapter, GPTNeoXAdapter):
    for _family in _cls.families:
        ADAPTERS[_family] = _cls()

SUPPORTED = sorted(ADAPTERS)


def adapter_for(model) -> Adapter:
    """The adapter for a transformers causal LM, or a clear error naming what is supported."""
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in ADAPTERS:
        raise ConfigError(
            f"model architecture {kind!r} ({type(model).__name__}) has no FFN adapter; supported: {', '.join(SUPPORTED)}"
        )
    return ADAPTERS[kind]
