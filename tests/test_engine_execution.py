"""Mask execution (docs/method.md section 1): masked vs compacted FFNs, detaching, mask order, measured overhead,
half-precision statistics and unsupported architectures."""
from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import tiny_gpt2, tiny_llama, tiny_neox  # noqa: E402
from dart.engine.controller import Controller  # noqa: E402
from dart.engine.ffn import PrunableFFN  # noqa: E402
from dart.engine.overhead import summarize  # noqa: E402
from dart.engine.scoring import vocab_projection_priors  # noqa: E402
from dart.compose import auto_spec, drift_spec, engine_spec  # noqa: E402
from dart.errors import ConfigError  # noqa: E402

BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "neox": tiny_neox}
PROMPT = torch.tensor([[5, 17, 99, 3, 42, 77, 12]])


@pytest.fixture(autouse=True)
def _priors_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DART_CACHE", str(tmp_path / "cache"))


def build(arch, **kw):
    model = BUILDERS[arch](layers=2, **kw)
    model.generation_config.eos_token_id = None  # never stop early: every run makes the same number of steps
    model.generation_config.pad_token_id = 0
    return model


def generate(model, ids, n=10):
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         output_logits=True, return_dict_in_generate=True)
    return torch.stack(out.logits, dim=1), out.sequences


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_masked_and_compact_agree(arch):
    runs = {}
    for execution in ("masked", "compact"):
        model = build(arch)
        c = Controller(model, engine_spec(sparsity=0.5, masking_step=2, ranking="max", execution=execution)).attach()
        logits, seq = generate(model, PROMPT, 12)
        runs[execution] = (logits, seq, c.masks().clone(), c)
    (lm, sm, mm, cm), (lc, sc, mc, cc) = runs["masked"], runs["compact"]
    assert logits.shape[1] == 12
    assert torch.equal(sm, sc)
    assert (lm - lc).abs().max().item() <= 1e-5
    # masks() reports the original neuron order: the same masks although the compacted weights were reordered
    assert torch.equal(mm, mc)
    assert not cm.compacted and cm.order.equal(torch.arange(cm.I, dtype=torch.int32).repeat(cm.L, 1))
    assert cc.compacted and not cc.order.equal(torch.arange(cc.I, dtype=torch.int32).repeat(cc.L, 1))
    assert cc.kept_prefix == [cc.I // 2] * cc.L
    # in the physical order the compacted masks are a prefix of ones
    assert cc.M[:, 0, : cc.I // 2].eq(1).all() and cc.M[:, 0, cc.I // 2 :].eq(0).all()
    # the mask really prunes: the pruned run differs from the dense one
    dense, _ = generate(build(arch), PROMPT, 12)
    assert (dense[:, 2] - lm[:, 2]).abs().max() > 1e-3


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_detach_restores_the_model_bit_for_bit(arch):
    original = build(arch)
    model = build(arch)
    before = model(PROMPT).logits
    c = Controller(model, engine_spec(sparsity=0.5, masking_step=1, execution="compact")).attach()
    assert sum(isinstance(m, PrunableFFN) for m in model.modules()) == 2
    generate(model, PROMPT, 8)
    assert c.compacted  # the weights were reordered in place
    c.detach()
    assert not any(isinstance(m, PrunableFFN) for m in model.modules())
    assert not model._forward_hooks and not model._forward_pre_hooks
    ref_params = dict(original.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, ref_params[name]), name
        assert p.is_contiguous() == ref_params[name].is_contiguous(), name
    ids = torch.tensor([[9, 1, 4, 100, 7, 3, 3, 8, 60]])
    assert torch.equal(model(ids).logits, original(ids).logits)
    assert torch.equal(model(PROMPT).logits, before)
    a, _ = generate(model, ids, 6)
    b, _ = generate(original, ids, 6)
    assert torch.equal(a, b)


def test_masks_original_order_after_recompaction():
    """Two builds in one run (a new request on an already compacted model): masks() stays in the original order,
    equal to what masked execution reports for the same requests."""
    got = {}
    for execution in ("masked", "compact"):
        model = build("llama")
        c = Controller(model, engine_spec(sparsity=0.75, masking_step=1, execution=execution, drift=drift_spec(enabled=False))).attach()
        generate(model, PROMPT, 4)
        first = c.masks().clone()
        logits, _ = generate(model, torch.tensor([[100, 2, 50, 51, 52]]), 4)
        got[execution] = (first, c.masks().clone(), logits)
    assert torch.equal(got["masked"][0], got["compact"][0])
    assert torch.equal(got["masked"][1], got["compact"][1])
    assert not torch.equal(got["masked"][0], got["masked"][1])
    assert (got["masked"][2] - got["compact"][2]).abs().max() <= 1e-5


def test_priors_are_the_vocabulary_projection_and_cached(tmp_path):
    model = build("llama")
    c = Controller(model, engine_spec(ranking="combined", drift=drift_spec(enabled=False)))
    E = model.get_input_embeddings().weight
    for l, layer in enumerate(model.model.layers):
        P = (layer.mlp.down_proj.weight.T.float() @ E.float().T).abs()  # (I, V)
        assert torch.allclose(c.weight[l], P.amax(1) + P.mean(1), rtol=1e-5, atol=1e-6)
        pmax, pmean = vocab_projection_priors(c.ffns[l].w.w_down_t, E, chunk=7)
        assert torch.allclose(c.weight[l], pmax + pmean, rtol=1e-5, atol=1e-6)
    cached = list((tmp_path / "cache" / "priors").glob("*.pt"))
    assert len(cached) == 1
    c2 = Controller(build("llama"), engine_spec(ranking="combined", drift=drift_spec(enabled=False)))
    assert torch.equal(c2.weight, c.weight)


def test_overhead_summary_is_measured():
    model = build("llama")
    c = Controller(model, engine_spec(sparsity=0.5, masking_step=2, ranking="max", execution="compact")).attach()
    generate(model, PROMPT, 6)  # prefill of 7 tokens + 5 decode forwards
    s = summarize(c, model)
    det = c.detector
    tensors = [c.stats.A, c.stats.align, c.weight, c.M, c.order,
               det.total, det.count, det.windows, det.center, det.tau, det.current]
    assert s["state_bytes"] == sum(t.numel() * t.element_size() for t in tensors)
    assert s["state_breakdown"]["masks"] == 2 * 1 * 64 * 4  # L x B x I fp32
    assert s["state_breakdown"]["priors"] == 2 * 64 * 4
    assert s["tokens_seen"] == 12.0  # 7 + 5
    assert s["tokens_traced"] == 8.0  # the prompt and the input of decode step 1 (m = 2)
    assert s["mask_builds"] == 1
    L, I, D = 2, 64, 32
    # the detector's baseline: the prompt and the inputs of forwards 1, 2 (published phase: through m) and 3 (two
    # windows of 5 vectors)
    assert c.counts.baseline_vectors == 10
    flops = 8 * L * I * 3 + 1 * L * (2 * I + I * math.log2(I)) + (10 + c.counts.decode_signal_tokens) * 2 * D + c.counts.checks * 6 * D
    assert s["engine_flops"] == pytest.approx(flops)
    params = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    per_token = 2.0 * (params - (0 if tied else emb.numel()))
    assert s["flops_ratio"] == pytest.approx(flops / (per_token * 12))
    assert s["flops_ratio"] > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("statistic", ["l2", "ema", "griffin"])
def test_half_precision_statistics_stay_finite(dtype, statistic):
    model = build("llama")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight.mul_(100)
            layer.mlp.up_proj.weight.mul_(100)
    model = model.to(dtype)
    acts = []
    h = model.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda mod, a: acts.append(a[0]))
    model(PROMPT)
    h.remove()
    assert torch.isfinite(acts[0]).all()
    if dtype == torch.float16:  # the premise: squares of these activations overflow fp16
        assert torch.isinf(acts[0].square()).any()
        assert torch.isinf(acts[0].square().sum(dim=(0, 1))).any()
    kw = {"ema_decay": 0.9} if statistic == "ema" else {"statistic": statistic}
    c = Controller(model, engine_spec(sparsity=0.5, masking_step=1, drift=drift_spec(enabled=False), **kw)).attach()
    logits, _ = generate(model, PROMPT, 3)
    assert c.stats.A.dtype == torch.float32
    assert torch.isfinite(c.stats.A).all() and c.stats.A.abs().sum() > 0
    if statistic == "l2":  # the statistic holds the squares exactly as fp32 sums
        expected = acts[0].float().square().sum(dim=(0, 1))
        got = torch.zeros_like(expected).scatter_(-1, c.order[0].long(), c.stats.A[0, 0])
        assert torch.allclose(got, expected, rtol=1e-5)
        assert got.max() > 65504
    assert c.has_mask == [True]
    assert c.masks().sum(-1).tolist() == [[32], [32]]
    assert torch.isfinite(logits).all()
    # the scoring path too
    c.score(model, PROMPT, torch.tensor([5]))
    assert torch.isfinite(c.stats.A).all() and c.masks().sum(-1).tolist() == [[32], [32]]


def _opt():
    from transformers import OPTConfig, OPTForCausalLM

    return OPTForCausalLM(OPTConfig(vocab_size=128, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                    num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=64,
                                    pad_token_id=0))


def _phi3():
    from transformers import Phi3Config, Phi3ForCausalLM

    return Phi3ForCausalLM(Phi3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, pad_token_id=0, bos_token_id=1, eos_token_id=2))


@pytest.mark.parametrize("make,kind", [(_opt, "opt"), (_phi3, "phi3")])
def test_unsupported_architecture(make, kind):
    model = make()
    with pytest.raises(ConfigError) as err:
        Controller(model, engine_spec())
    msg = str(err.value)
    assert repr(kind) in msg
    for family in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma3_text", "gpt2", "gpt_neox"):
        assert family in msg
    assert "supported" in msg
