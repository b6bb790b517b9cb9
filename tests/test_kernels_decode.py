"""Decoding through the CPU kernels (dart.kernels) against decoding through torch: the lean loop (dense, compacted,
masked, a batch), the per-token methods' fast paths (TEAL, WINA, CATS: sparse-input kernels on weights laid out
K-major in place) and `generate` inside kernels.decoding. In fp32 the tokens are the same and the logits agree to
1e-4; the per-token counts (effective sparsity) are identical; detaching puts the model back bit for bit."""
from __future__ import annotations

import pytest
import torch

from dart import kernels
from dart.bench.lean import LeanDecoder
from dart.compose import build_strategy
from dart.kernels import build
from tests.conftest import tiny_llama

pytestmark = pytest.mark.skipif(build.compiler() is None, reason="no C++ compiler on this machine: kernels off")

IDS = torch.tensor([[5, 17, 99, 3, 42, 77, 12, 8, 64, 31], [9, 1, 2, 120, 7, 7, 55, 60, 101, 4]])
SMALL_CAL = {"tokens": 1024, "seq_len": 256}
GREEDY = {"step": 0.2, "sequences": 1}  # TEAL's greedy, coarse: a few steps per layer of the tiny model


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DART_CACHE", str(tmp_path / "cache"))  # priors and calibration of tiny models
    assert kernels.available(), kernels.info()["reason"]


@pytest.fixture(scope="module")
def tok():
    from dart.models.tokenizers import tiny_tokenizer

    return tiny_tokenizer()


def model(dtype=torch.float32, inter=256, hidden=64):
    m = tiny_llama(layers=3, vocab=1024, inter=inter, hidden=hidden).to(dtype)
    m.generation_config.eos_token_id = None
    m.generation_config.pad_token_id = 0
    return m


def decode(m, ids, use_kernels, controller=None, per_token=None, n=16):
    """Greedy tokens and every step's logits from the lean loop."""
    dec = LeanDecoder(m, ids.shape[1] + n + 1, batch=ids.shape[0], controller=controller, kernels=use_kernels,
                      per_token=per_token)
    tok, pos, toks, logits = dec.forward(ids, 0)[:, -1].argmax(-1, keepdim=True), ids.shape[1], [], []
    for _ in range(n):
        lg = dec.forward(tok, pos)[:, -1]
        logits.append(lg.float())
        tok, pos = lg.argmax(-1, keepdim=True), pos + 1
        toks.append(tok)
    return torch.cat(toks, 1), torch.stack(logits, 1)


@pytest.mark.parametrize("make", [
    lambda: None,
    lambda: build_strategy("static_prompt", sparsity=0.5, execution="compact"),
    lambda: build_strategy("static_prompt", sparsity=0.7, execution="masked"),
], ids=["dense", "compacted", "masked"])
@pytest.mark.parametrize("batch", [1, 2])
def test_lean_decode_through_the_kernels_equals_torch(make, batch):
    m, ids = model(), IDS[:batch]
    got = {}
    for use in (False, True):
        strat = make()
        if strat is not None:
            strat.attach(m)
        got[use] = decode(m, ids, use, controller=strat.controller if strat else None)
        if strat is not None:
            assert strat.spec.execution != "compact" or batch > 1 or strat.controller.compacted
            strat.detach()
    assert torch.equal(got[True][0], got[False][0])
    torch.testing.assert_close(got[True][1], got[False][1], atol=1e-4, rtol=1e-4)


def test_lean_decode_in_bf16_agrees_with_torch():
    """bf16: the kernels round where torch rounds, so the logits agree to bf16's precision and greedy decoding
    writes the same text here (a flip near a tie is possible in general: the bench reports the agreement)."""
    m = model(torch.bfloat16)
    strat = build_strategy("static_prompt", sparsity=0.5, execution="compact")
    got = {}
    for use in (False, True):
        strat.attach(m)
        got[use] = decode(m, IDS[:1], use, controller=strat.controller)
        strat.detach()
    assert torch.equal(got[True][0], got[False][0])
    assert (got[True][1] - got[False][1]).abs().max().item() < 0.05


@pytest.mark.parametrize("name", ["teal", "wina", "cats", "teal_published"])
def test_per_token_fast_path_equals_the_masked_rule(name, tok):
    """The sparse-input kernels on K-major weights against the rule run masked in torch: the same tokens, logits
    within 1e-4, the same counts of skipped weight reads (TEAL as published: its attention projections' too); the
    layout is put back bit for bit on detach."""
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    got, eff = {}, {}
    for use in (False, True):
        knobs = {} if name == "wina" else {"calibration": SMALL_CAL}
        if name == "teal_published":
            knobs["greedy"] = GREEDY
        strat = build_strategy(name, sparsity=0.5, **knobs)
        strat.attach(m, tok)
        got[use] = decode(m, IDS[:1], use, per_token=strat.engine)
        assert all(f.kmajor for f in strat.engine.ffns) == use
        if use:
            down = strat.engine.ffns[0].w.w_down_t
            assert down.is_contiguous() and down.shape == (256, 64)  # K-major: one row of D per neuron
            if name == "teal_published":
                q = strat.engine.attention[0]["q"]
                assert q.wt.is_contiguous() and q.wt.shape == (64, 64)  # K-major: one row per input channel
        eff[use] = strat.summary()["sparsity"]
        strat.detach()
        for k, v in m.state_dict().items():
            assert torch.equal(v, before[k]) and v.is_contiguous(), k
    assert torch.equal(got[True][0], got[False][0])
    torch.testing.assert_close(got[True][1], got[False][1], atol=1e-4, rtol=1e-4)
    assert eff[True]["effective"] == eff[False]["effective"] > 0.2
    assert eff[True]["achieved"] == eff[False]["achieved"]
    assert eff[True]["effective_model"] == eff[False]["effective_model"]
    if name == "teal_published":  # its attention inputs are thresholded too: over all seven projections it skips
        assert eff[True]["effective_model"] > 0.2    # a share of their reads; an FFN-only method's is the FFN's share
    else:
        assert eff[True]["effective_model"] < eff[True]["effective"]


def test_generate_inside_decoding_equals_generate():
    """transformers' generate with every Linear (attention, LM head) and the engine's FFN on the kernels: the same
    tokens as without; the modules are put back after the block."""
    m = model()
    strat = build_strategy("static_prompt", sparsity=0.5, execution="compact")
    strat.attach(m)
    kw = dict(attention_mask=torch.ones_like(IDS[:1]), max_new_tokens=12, do_sample=False)
    ref = m.generate(IDS[:1], **kw)
    with kernels.decoding(m):
        assert kernels.active() and "forward" in m.lm_head.__dict__
        got = m.generate(IDS[:1], **kw)
    strat.detach()
    assert torch.equal(got, ref)
    assert "forward" not in m.lm_head.__dict__ and not kernels.active()


@pytest.mark.integration
def test_embedded_smollm2_decodes_the_same_tokens_through_the_kernels():
    """The real SmolLM2 (fp32): dense, compacted 50% and TEAL 50% write the same 24 tokens after a news prompt with
    the kernels as without them."""
    from omegaconf import OmegaConf

    from dart.bench.decode import prompt_ids
    from dart.models.loading import load_model

    loaded = load_model(OmegaConf.load("conf/model/smollm2_135m.yaml"), device="cpu", dtype="float32")
    m, tok = loaded.model, loaded.tokenizer
    ids = prompt_ids(tok, 1, 48, "cpu")
    for make in (lambda: None, lambda: build_strategy("static_prompt", sparsity=0.5, execution="compact"),
                 lambda: build_strategy("teal", sparsity=0.5, calibration=SMALL_CAL)):
        got = {}
        for use in (False, True):
            strat = make()
            if strat is not None:
                strat.attach(m, tok)
            got[use] = decode(m, ids, use, controller=getattr(strat, "controller", None),
                              per_token=getattr(strat, "engine", None), n=24)
            if strat is not None:
                strat.detach()
        assert torch.equal(got[True][0], got[False][0])
        torch.testing.assert_close(got[True][1], got[False][1], atol=2e-3, rtol=1e-3)
