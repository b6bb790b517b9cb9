"""Architecture numbers kept in conf/model/*.yaml -> a transformers config, so `model.init=random` builds any
configured model with random weights and no download (plumbing, tests and speed work)."""
from __future__ import annotations

from typing import Any

from dart.errors import choice_error


def _llama_like(cls_name: str, a: dict[str, Any], **extra):
    import transformers

    cls = getattr(transformers, cls_name)
    kw = dict(
        vocab_size=a["vocab_size"],
        hidden_size=a["hidden_size"],
        intermediate_size=a["intermediate_size"],
        num_hidden_layers=a["num_layers"],
        num_attention_heads=a["num_heads"],
        num_key_value_heads=a.get("num_kv_heads") or a["num_heads"],
        max_position_embeddings=a.get("max_position", 4096),
        rms_norm_eps=a.get("norm_eps", 1e-5),
        tie_word_embeddings=bool(a.get("tie_embeddings", False)),
        hidden_act=a.get("act", "silu"),
    )
    if a.get("head_dim"):
        kw["head_dim"] = a["head_dim"]
    if a.get("rope_theta"):
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": float(a["rope_theta"])}
    kw.update(extra)
    return cls(**kw)


def _gpt2(a: dict[str, Any]):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=a["vocab_size"],
        n_embd=a["hidden_size"],
        n_inner=a["intermediate_size"],
        n_layer=a["num_layers"],
        n_head=a["num_heads"],
        n_positions=a.get("max_position", 1024),
        activation_function=a.get("act", "gelu_new"),
        tie_word_embeddings=bool(a.get("tie_embeddings", True)),
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


def _gpt_neox(a: dict[str, Any]):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=a["vocab_size"],
        hidden_size=a["hidden_size"],
        intermediate_size=a["intermediate_size"],
        num_hidden_layers=a["num_layers"],
        num_attention_heads=a["num_heads"],
        max_position_embeddings=a.get("max_position", 2048),
        hidden_act=a.get("act", "gelu"),
        tie_word_embeddings=bool(a.get("tie_embeddings", False)),
        use_parallel_residual=bool(a.get("parallel_residual", True)),
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )


BUILDERS = {
    "llama": lambda a: _llama_like("LlamaConfig", a),
    "mistral": lambda a: _llama_like("MistralConfig", a, sliding_window=None),
    "qwen2": lambda a: _llama_like("Qwen2Config", a),
    "qwen3": lambda a: _llama_like("Qwen3Config", a),
    "gemma3_text": lambda a: _llama_like("Gemma3TextConfig", a, hidden_activation=a.get("act", "gelu_pytorch_tanh")),
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
}


def hf_config(arch: dict[str, Any]):
    """A transformers config from the architecture numbers of a model config."""
    kind = arch.get("model_type")
    if kind not in BUILDERS:
        raise choice_error("model.model_type (for model.init=random)", kind, BUILDERS)
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads") if not arch.get(k)]
    if missing:
        raise choice_error("model architecture numbers missing for init=random", missing, ["set them in conf/model"])
    return BUILDERS[kind](arch)
