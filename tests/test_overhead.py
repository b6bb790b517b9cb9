"""The analytic overhead (architecture numbers only; used for the Llama-3.1-8B figures) equals what the engine
measures from its own tensors and counters on a real (tiny) run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_llama  # noqa: E402
from dart.engine.overhead import analytic, model_flops_per_token, summarize  # noqa: E402
from dart.compose import build_strategy  # noqa: E402


@pytest.fixture(autouse=True)
def _priors_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DART_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("ranking,allocation", [("magnitude", "uniform"), ("combined", "uniform"), ("max", "auto")])
def test_analytic_overhead_equals_the_measured_one(ranking, allocation):
    m = tiny_llama(layers=3, hidden=32, inter=64, vocab=128)
    m.generation_config.eos_token_id = None
    s = build_strategy("dart", sparsity=0.5, ranking=ranking, allocation=allocation, drift=dict(window=4, min_margin=10.0))  # never fires
    s.attach(m)
    P, N = 12, 9
    ids = torch.arange(3, 3 + P)[None]
    m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=N, do_sample=False, pad_token_id=0)
    measured = summarize(s.controller, m)
    params = model_flops_per_token(m) / 2
    est = analytic(3, 64, 32, params, s.spec, prompt_tokens=P, new_tokens=N, mask_bytes=4)
    s.detach()
    assert est["state_bytes"] == measured["state_bytes"]
    assert est["state_breakdown"]["detector_peak"] == measured["state_breakdown"]["detector_peak"]
    assert est["engine_flops_breakdown"]["tracing"] == measured["engine_flops_breakdown"]["tracing"]
    assert measured["mask_builds"] == 1 and est["engine_flops"] == measured["engine_flops"]
    assert est["model_flops"] == measured["model_flops"] and est["flops_ratio"] == measured["flops_ratio"]


def test_llama31_8b_overhead_is_within_the_papers_claims():
    from hydra import compose, initialize_config_dir

    from dart.bench.overhead import overhead

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose("bench_overhead", overrides=["model=llama3_8b", "strategy=dart", "ranking=combined", "dtype=bfloat16"])
    res = overhead(cfg, 512, 512)
    assert res["params"] == 8_030_261_248  # Llama-3.1-8B
    b = res["state_breakdown"]
    assert b["statistics"] == 4 * 32 * (14336 + 3) and b["masks"] == 2 * 32 * 14336
    assert res["state_bytes"] + b["detector_peak"] - b["detector"] < 10e6  # < 10 MB, even at the detector's peak
    assert res["flops_ratio"] <= 1e-3  # <= 0.1%
