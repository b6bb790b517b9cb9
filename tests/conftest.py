"""Shared fixtures: tiny random models of each FFN family (built in milliseconds), and a CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# One intra-op thread per test process (and per CLI subprocess): the suite runs its files in parallel
# (pytest-xdist, one worker per core), and oversubscribed OpenMP pools on a 2-core machine run 4x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
# the decode kernels' build, shared by every test and CLI subprocess, wherever a test moves DART_CACHE
from dart.paths import cache_root  # noqa: E402

os.environ.setdefault("DART_KERNELS_DIR", str(cache_root() / "kernels"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_llama(layers=3, hidden=32, inter=64, vocab=128, seed=0, **kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, **kw)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(layers=3, hidden=32, inter=64, vocab=128, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_embd=hidden, n_inner=inter, n_layer=layers, n_head=4, n_positions=256,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


def tiny_neox(layers=3, hidden=32, inter=64, vocab=128, seed=0):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                        num_attention_heads=4, max_position_embeddings=256, hidden_dropout=0.0, attention_dropout=0.0)
    return GPTNeoXForCausalLM(cfg).eval()


MODEL_BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "neox": tiny_neox}


@pytest.fixture(params=sorted(MODEL_BUILDERS))
def any_tiny_model(request):
    return MODEL_BUILDERS[request.param]()


def run_cli(*args: str, timeout: float = 600, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m dart.run ARGS` in a subprocess (hydra app), returning the completed process."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "dart.run", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
