"""The dense reference stored once and reused (dart.evals.dense_cache): the same comparison with and without it,
keyed by the weights and the batch, computed from the model as loaded, robust to a damaged entry."""
from __future__ import annotations

import pytest
import torch

from dart.compose import build_strategy
from dart.evals.decoding import compare_with_dense, dense_logits
from dart.evals.dense_cache import DenseCache
from tests.conftest import tiny_llama

P = 6


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DART_CACHE", str(tmp_path / "cache"))


def batch(seed: int, rows: int = 2, length: int = 20) -> torch.Tensor:
    return torch.randint(0, 128, (rows, length), generator=torch.Generator().manual_seed(seed))


def peaky(dtype=torch.float32):
    """A tiny random Llama whose next-token distributions are far from uniform (a pruned run then has KL ~0.01, not ~1e-5)."""
    model = tiny_llama()
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    return model.to(dtype)


def fields(c):
    return (c.kl, c.top1, c.nll, c.nll_dense)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_comparison_equals_the_plain_one(tmp_path, dtype):
    model = peaky(dtype)
    cache = DenseCache(model, tmp_path / "dense")
    ids = batch(0)
    cache.warm(model, [ids], P)  # before the strategy attaches: the plain model's logits
    assert (cache.misses, len(list((tmp_path / "dense").iterdir()))) == (1, 1)
    stored = cache.logits(ids, P, lambda: pytest.fail("recomputed a stored batch"))
    assert stored.dtype == dtype and torch.equal(stored, dense_logits(model, ids, P))  # the model's own numbers
    strategy = build_strategy("static_prompt", sparsity=0.5)
    strategy.attach(model)
    try:
        plain = compare_with_dense(model, strategy, ids, P)
        cached = compare_with_dense(model, strategy, ids, P, dense_cache=cache)
    finally:
        strategy.detach()
    for a, b in zip(fields(plain), fields(cached)):
        if dtype == torch.float32:
            assert torch.allclose(a, b, atol=1e-5)
        else:  # the plain reference ran over compacted (reordered) weights: bf16 rounds differently
            assert (a - b).abs().max() < 0.05
    assert plain.kl.mean() > 0.005 and cache.hits == 2


def test_keys_follow_the_weights_and_the_batch(tmp_path):
    model = tiny_llama()
    cache = DenseCache(model, tmp_path)
    assert cache.path(batch(0), P) == DenseCache(tiny_llama(), tmp_path).path(batch(0), P)  # same weights, same key
    assert cache.path(batch(0), P) != cache.path(batch(1), P)
    assert cache.path(batch(0), P) != cache.path(batch(0), P + 1)
    assert cache.path(batch(0, rows=2), P) != cache.path(batch(0, rows=1), P)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 5] += 1.0  # one weight of one layer
    assert DenseCache(model, tmp_path).path(batch(0), P) != cache.path(batch(0), P)


def test_a_damaged_entry_is_recomputed(tmp_path):
    model = tiny_llama()
    cache = DenseCache(model, tmp_path)
    ids = batch(2)
    path = cache.path(ids, P)
    path.write_bytes(b"not a safetensors file")
    got = cache.logits(ids, P, lambda: dense_logits(model, ids, P))
    assert cache.misses == 1 and torch.equal(got, dense_logits(model, ids, P))
    assert torch.equal(cache.logits(ids, P, lambda: pytest.fail("recomputed")), got)
    assert not list(tmp_path.glob("*.tmp"))
