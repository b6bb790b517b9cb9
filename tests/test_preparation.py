"""Preparation before the first evaluation step: progress lines for slow phases (dart.progress), the priors and the
calibration results computed once and read back (dart.disk_cache), invalidated when the model or the request
changes. Tiny random Llama; a fresh cache per test."""
from __future__ import annotations

import pytest
import torch

from dart.compose import build_strategy
from tests.conftest import tiny_llama


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DART_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


class Clock:
    """A clock that moves 4 s every time it is read."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 4.0
        return self.t


def test_a_short_phase_is_silent_a_long_one_prints_its_eta(capsys):
    from dart.progress import phase

    with phase("quick", 5, unit="layer") as step:
        for _ in range(5):
            step()
    assert capsys.readouterr().out == ""
    with phase("slow", 8, unit="layer", clock=Clock()) as step:  # 4 s a layer: a line once 10 s have passed
        for _ in range(8):
            step()
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["[dart] slow: layer 3/8, 0:12 elapsed, ETA 0:20", "[dart] slow: layer 6/8, 0:24 elapsed, ETA 0:08",
                     "[dart] slow: 8 layers done in 0:36"]


def tok():
    from dart.models.tokenizers import tiny_tokenizer

    return tiny_tokenizer()


def small_calibration(**kw) -> dict:
    return {"source": "calibration", "tokens": 256, "seq_len": 64, "sample": 4096, "seed": 0, **kw}


def count_forwards(model) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_calibration_prints_progress_and_is_computed_once(monkeypatch, capsys, fresh_cache):
    import dart.progress

    monkeypatch.setattr(dart.progress, "INTERVAL_S", 0.0)  # every step prints
    m, t = tiny_llama(layers=2, inter=64, vocab=1024), tok()
    calls = count_forwards(m)
    first = build_strategy("teal", sparsity=0.5, calibration=small_calibration())
    first.attach(m, t)
    first.detach()
    out = capsys.readouterr().out
    assert calls[0] == 4  # 256 tokens in 4 sequences of 64
    assert "[dart] calibration (256 tokens of dense forwards): sequence 1/4" in out
    assert "[dart] calibration (256 tokens of dense forwards): 4 sequences done in" in out
    second = build_strategy("teal", sparsity=0.5, calibration=small_calibration())
    second.attach(m, t)
    second.detach()
    assert calls[0] == 4 and "calibration" not in capsys.readouterr().out  # read back: no forward, no line
    a, b = first.calibration_info, second.calibration_info
    assert a["thresholds_input"] == b["thresholds_input"] and a["thresholds_down"] == b["thresholds_down"]
    assert len(list((fresh_cache / "calibration").glob("*.pt"))) == 1


@pytest.mark.parametrize("change", ["sparsity", "seed", "tokens", "weights"])
def test_cached_calibration_is_invalidated_by_what_it_depends_on(change):
    m, t = tiny_llama(layers=2, inter=64, vocab=1024), tok()
    calls = count_forwards(m)
    first = build_strategy("teal", sparsity=0.5, calibration=small_calibration())
    first.attach(m, t)
    first.detach()
    before = calls[0]
    sparsity, cal = 0.5, small_calibration()
    if change == "sparsity":
        sparsity = 0.6
    elif change in ("seed", "tokens"):
        cal = small_calibration(**{change: {"seed": 1, "tokens": 192}[change]})
    else:
        with torch.no_grad():
            m.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0
    s = build_strategy("teal", sparsity=sparsity, calibration=cal)
    s.attach(m, t)
    s.detach()
    assert calls[0] > before  # calibrated again


def test_static_and_cats_calibrations_are_read_back_identical():
    m, t = tiny_llama(layers=2, inter=64, vocab=1024), tok()
    for name, knobs in (("static", {"score": "act_norm"}), ("cats", {})):
        got = []
        for _ in range(2):
            s = build_strategy(name, sparsity=0.5, calibration=small_calibration(), **knobs)
            s.attach(m, t)
            got.append(s.summary())
            s.detach()
        if name == "static":
            assert got[0]["sparsity"]["per_layer"] == got[1]["sparsity"]["per_layer"]
        assert got[0]["strategy"]["calibration"]["tokens"] == got[1]["strategy"]["calibration"]["tokens"] == 256
        if name == "cats":
            assert got[0]["strategy"]["calibration"]["thresholds"] == got[1]["strategy"]["calibration"]["thresholds"]


def test_priors_print_progress_and_are_shared_by_bf16_and_fp32_copies(monkeypatch, capsys, fresh_cache):
    import dart.progress
    from dart.engine.adapters import adapter_for
    from dart.engine.scoring import cached_priors, vocab_projection_priors

    monkeypatch.setattr(dart.progress, "INTERVAL_S", 0.0)
    m = tiny_llama(layers=2, inter=64, vocab=1024).to(torch.bfloat16)
    ad = adapter_for(m)
    downs = [w.w_down_t for w in ad.all_weights(m)]
    pmax, pmean = cached_priors(ad.embedding(m), downs, chunk=256)
    out = capsys.readouterr().out
    assert "[dart] vocabulary-projection priors (2 layers x 64 neurons x 1024 tokens, once per model): chunk 1/8" in out
    want = [vocab_projection_priors(w, ad.embedding(m), 256) for w in downs]
    assert torch.equal(pmax, torch.stack([w[0] for w in want])) and torch.equal(pmean, torch.stack([w[1] for w in want]))
    m32 = m.float()  # the same values in fp32: the same entry
    again = cached_priors(ad.embedding(m32), [w.w_down_t for w in ad.all_weights(m32)], chunk=256)
    assert "priors" not in capsys.readouterr().out
    assert torch.equal(again[0], pmax) and torch.equal(again[1], pmean)
    assert len(list((fresh_cache / "priors").glob("*.pt"))) == 1
