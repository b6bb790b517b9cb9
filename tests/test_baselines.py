"""The calibrated baselines (docs/method.md section 8): strategy=static (one calibrated mask per layer, on the engine's
Controller with fixed masks) and strategy=cats (per-token thresholds on |act(gate x)|).

Hand-built cases check the scores, masks, thresholds and zeroed entries against numbers computed by hand; tiny
random models check the plumbing (calibration hooks, compacted vs masked execution, batch invariance, detach);
one CLI run checks results.json; the calibration text is checked to share nothing with the evaluation texts."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli, tiny_gpt2, tiny_llama  # noqa: E402
from dart.engine.adapters import FFNWeights  # noqa: E402
from dart.strategies.calibration_stats import (  # noqa: E402
    calibrate, ffn_activations, neuron_scores, quantile_threshold,
    sample_counts, static_masks,
)
from dart.strategies.per_token_engine import PerTokenEngine  # noqa: E402
from dart.strategies.per_token_rules import CatsRule  # noqa: E402
from dart.errors import ConfigError  # noqa: E402
from dart.compose import build_strategy, calibration_spec  # noqa: E402

BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
SMALL_CAL = {"tokens": 1024, "seq_len": 256}


@pytest.fixture(scope="module")
def tok():
    from dart.models.tokenizers import tiny_tokenizer

    return tiny_tokenizer()


def build(arch="llama", layers=2, seed=0):
    model = BUILDERS[arch](layers=layers, vocab=1024, seed=seed)  # the tiny tokenizer's 1k vocabulary
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def generate(model, ids, n=8):
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         output_logits=True, return_dict_in_generate=True)
    return torch.stack(out.logits, dim=1), out.sequences


def rows(n, T=12, seed=3):
    return torch.randint(3, 1024, (n, T), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ hand-built FFNs
def identity(t):
    return t


# gated, D = 2, I = 4, act = identity (so every activation is a small integer)
GATE = torch.tensor([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0], [2.0, 0.0]])
UP = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 2.0]])
DOWN_T = torch.tensor([[3.0, 4.0], [10.0, 0.0], [0.0, 0.5], [0.1, 0.0]])  # rows = W_down[:, j], norms 5, 10, 0.5, 0.1
X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])  # three calibration tokens


def gated_ffn(down=DOWN_T):
    return FFNWeights(gated=True, w_in=[GATE.clone(), UP.clone()], b_in=[None, None], w_down_t=down.clone(),
                      b_down=None, act=identity)


def test_static_scores_and_masks_by_hand():
    w = gated_ffn()
    g, a = ffn_activations(w, X)
    # x1 = (1, 0): g = (1, 0, 1, 2), up = (1, 0, 1, 0), a = (1, 0, 1, 0)
    # x2 = (0, 1): g = (0, 3, 1, 0), up = (0, 1, 0, 2), a = (0, 3, 0, 0)
    # x3 = (2, 1): g = (2, 3, 3, 4), up = (2, 1, 2, 2), a = (4, 3, 6, 8)
    assert a.tolist() == [[1, 0, 1, 0], [0, 3, 0, 0], [4, 3, 6, 8]]
    act_sq = a.square().sum(0)[None]  # (L=1, I)
    assert act_sq.tolist() == [[17, 18, 37, 64]]

    act_norm = neuron_scores("act_norm", [w], act_sq)
    assert torch.allclose(act_norm, torch.tensor([[17, 18, 37, 64]]).sqrt())
    wanda = neuron_scores("wanda", [w], act_sq)  # ||a_j|| * ||W_down[:, j]||
    assert torch.allclose(wanda, torch.tensor([[17**0.5 * 5, 18**0.5 * 10, 37**0.5 * 0.5, 64**0.5 * 0.1]]))
    weight = neuron_scores("weight", [w])  # ||W_gate[j]|| * ||W_up[j]||: 1*1, 3*1, sqrt2*1, 2*2
    assert torch.allclose(weight, torch.tensor([[1.0, 3.0, 2**0.5, 4.0]]))

    # sparsity 0.5: keep floor(0.5 * 4) = 2 neurons; the three scores keep three different pairs
    assert static_masks(act_norm, 0.5).tolist() == [[False, False, True, True]]  # 8 and 6.08
    assert static_masks(wanda, 0.5).tolist() == [[True, True, False, False]]  # 42.4 and 20.6
    assert static_masks(weight, 0.5).tolist() == [[False, True, False, True]]  # 4 and 3
    # sparsity 0.7: floor(0.3 * 4) = 1 neuron; 0.2: floor(0.8 * 4) = 3
    assert static_masks(act_norm, 0.7).tolist() == [[False, False, False, True]]
    assert static_masks(wanda, 0.2).tolist() == [[True, True, True, False]]


def test_weight_score_of_a_plain_ffn_by_hand():
    fc = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])  # row norms 5, 1, 2
    down = torch.tensor([[1.0, 0.0], [0.0, 6.0], [2.0, 0.0]])  # norms 1, 6, 2
    w = FFNWeights(gated=False, w_in=[fc], b_in=[torch.zeros(3)], w_down_t=down, b_down=None, act=identity)
    assert neuron_scores("weight", [w]).tolist() == [[5.0, 6.0, 4.0]]  # ||W_fc[j]|| * ||W_down[:, j]||
    assert static_masks(neuron_scores("weight", [w]), 0.5).tolist() == [[False, True, False]]  # keeps floor(1.5) = 1
    assert static_masks(neuron_scores("weight", [w]), 0.3).tolist() == [[True, True, False]]  # keeps floor(2.1) = 2


def test_quantile_threshold_by_hand():
    v = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0])
    # n = 10, sparsity 0.3: k = 3, t = the 4th smallest = 0.4; exactly 0.1, 0.2, 0.3 fall below it
    assert quantile_threshold(v, 0.3).item() == pytest.approx(0.4)
    assert (v < quantile_threshold(v, 0.3)).sum().item() == 3
    assert quantile_threshold(v, 0.5).item() == pytest.approx(0.6)  # k = 5
    assert quantile_threshold(v, 0.95).item() == pytest.approx(1.0)  # k = floor(9.5) = 9
    assert quantile_threshold(v, 0.0).item() == 0.0  # nothing below: nothing zeroed
    assert quantile_threshold(v, 0.29).item() == pytest.approx(0.3)  # k = floor(2.9) = 2


def test_quantile_threshold_above_the_torch_quantile_limit():
    n = 2**24 + 1000  # torch.quantile refuses more than 2^24 elements
    v = torch.arange(n, dtype=torch.float32).remainder_(1000.0)  # ties everywhere: 0..999, each about 16.8k times
    t = quantile_threshold(v, 0.5)
    k = math.floor(0.5 * n)
    assert t.dtype == torch.float32
    assert (v < t).sum().item() <= k < (v <= t).sum().item()  # t is the (k+1)-th smallest value
    assert t.item() == 499.0


def test_sample_counts():
    assert sample_counts([3, 1], width=2, sample=100) == [6, 2]  # 8 values <= 100: all of them
    assert sample_counts([3, 1], width=2, sample=4) == [3, 1]  # 4 * 6 // 8 = 3, then 4 - 3
    assert sum(sample_counts([7, 5, 3], width=11, sample=50)) == 50


class _Engine:  # the fields a PerTokenFFN reads from its engine, for hand-built cases
    def __init__(self, t):
        self.is_paused, self.sparse, self.rule, self.counts = False, True, CatsRule([torch.tensor(t)]), []

    def count(self, layer, zeroed, skipped):
        self.counts.append(zeroed.sum().item())
        assert torch.equal(skipped, zeroed * 2 * 2)  # a zeroed g skips a row of up and of down (D = 2 weights each)


def test_cats_zeroes_exactly_the_entries_below_the_threshold_by_hand():
    from dart.strategies.per_token_engine import PerTokenFFN

    down = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
    engine = _Engine(2.0)
    ffn = PerTokenFFN(torch.nn.Identity(), gated_ffn(down), 0, engine)
    x = torch.tensor([[[1.0, -2.0], [0.5, 0.5]]])  # (B=1, T=2, D=2)
    # token 1: g = (1, -6, -1, 2): |g| >= 2 keeps (0, -6, 0, 2) (2 itself is kept); up = (1, -2, 1, -4)
    #          a = (0, 12, 0, -8); out = 12 * (0, 1) - 8 * (1, -1) = (-8, 20)
    #          (dense: a = (1, 12, -1, -8), out = (1, 0) + (0, 12) - (1, 1) - 8 * (1, -1) = (-8, 19))
    # token 2: g = (0.5, 1.5, 1, 1): all below 2, out = (0, 0)
    #          (dense: up = (0.5, 0.5, 0.5, 1), a = (0.25, 0.75, 0.5, 1), out = (1.75, 0.25))
    assert ffn(x).tolist() == [[[-8.0, 20.0], [0.0, 0.0]]]
    assert engine.counts == [6]  # 2 + 4 zeroed entries
    engine.is_paused = True  # paused: the dense FFN
    assert ffn(x).tolist() == [[[-8.0, 19.0], [1.75, 0.25]]]
    assert engine.counts == [6]


# ------------------------------------------------------------------------------------ calibration plumbing
def test_calibrate_matches_the_model_activations(tok):
    model = build("llama")
    seqs = calibration_spec(tokens=700, seq_len=256).sequences(tok)
    assert [len(s) for s in seqs] == [256, 256, 188]
    cal = calibrate(model, seqs, norms=True, gate_sample=10**9)
    # the same statistics from the model's own modules: the input of down_proj and act(gate_proj x)
    down_in, gates = {0: [], 1: []}, {0: [], 1: []}
    hooks = []
    for l, layer in enumerate(model.model.layers):
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, l=l: down_in[l].append(a[0])))
        hooks.append(layer.mlp.gate_proj.register_forward_hook(
            lambda m, a, out, l=l, act=layer.mlp.act_fn: gates[l].append(act(out).abs().reshape(-1))))
    with torch.no_grad():
        for s in seqs:
            model(s[None])
    for h in hooks:
        h.remove()
    assert cal.tokens == 700 and cal.act_sq.dtype == torch.float32 and cal.act_sq.shape == (2, 64)
    for l in range(2):
        expected = sum(a.float().square().sum(dim=(0, 1)) for a in down_in[l])
        assert torch.allclose(cal.act_sq[l], expected, rtol=1e-5)
        values = torch.cat(gates[l])
        assert cal.gate_values[l].numel() == 700 * 64  # fewer values than the sample: all of them
        assert torch.equal(cal.gate_values[l].sort().values, values.sort().values)


def test_gate_sample_is_sized_and_deterministic(tok):
    model = build("llama")
    seqs = calibration_spec(tokens=700, seq_len=256).sequences(tok)
    a = calibrate(model, seqs, gate_sample=5000, seed=1).gate_values
    b = calibrate(model, seqs, gate_sample=5000, seed=1).gate_values
    c = calibrate(model, seqs, gate_sample=5000, seed=2).gate_values
    assert [v.numel() for v in a] == [5000, 5000]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


# ------------------------------------------------------------------------------------ strategy=static
@pytest.mark.parametrize("score", ["act_norm", "wanda", "weight"])
def test_static_masks_are_the_calibrated_top_k(tok, score):
    model = build("llama")
    s = build_strategy("static", sparsity=0.75, score=score, calibration=SMALL_CAL)
    expected = s.compute_masks(model, tok)
    # recompute from the definitions on the untouched model
    seqs = calibration_spec(**SMALL_CAL).sequences(tok)
    act_sq = calibrate(model, seqs, norms=True).act_sq
    mlps = [layer.mlp for layer in model.model.layers]
    down_norm = torch.stack([m.down_proj.weight.float().norm(dim=0) for m in mlps])
    gate_up = torch.stack([m.gate_proj.weight.float().norm(dim=1) * m.up_proj.weight.float().norm(dim=1) for m in mlps])
    sc = {"act_norm": act_sq.sqrt(), "wanda": act_sq.sqrt() * down_norm, "weight": gate_up}[score]
    keep = sc.topk(16, dim=-1).indices  # floor(0.25 * 64)
    assert torch.equal(expected, torch.zeros(2, 64, dtype=torch.bool).scatter_(1, keep, True))
    s.attach(model, tok)
    assert torch.equal(s.controller.masks()[:, 0], expected)  # original order, though the weights were compacted
    assert s.controller.compacted and s.controller.kept_prefix == [16, 16]
    s.detach()


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_static_compacted_and_masked_agree(tok, arch):
    """B = 1 generate (compacted FFN) vs the same prompt in a batch (masked FFN) vs execution=masked."""
    prompt = rows(1, T=9, seed=5)
    batch = torch.cat([prompt, rows(2, T=9, seed=6)])
    runs = {}
    for execution in ("auto", "masked"):
        model = build(arch)
        s = build_strategy("static", sparsity=0.5, calibration=SMALL_CAL, execution=execution)
        s.attach(model, tok)
        single, seq1 = generate(model, prompt, 8)
        assert s.controller.compacted == (execution == "auto")
        many, seqb = generate(model, batch, 8)
        runs[execution] = (single, seq1, many, seqb, s.controller.masks()[:, 0].clone())
        s.detach()
    (s_a, q_a, m_a, qb_a, mk_a), (s_m, q_m, m_m, qb_m, mk_m) = runs["auto"], runs["masked"]
    assert torch.equal(mk_a, mk_m)
    assert torch.equal(q_a, q_m) and torch.equal(q_a[0], qb_a[0]) and torch.equal(qb_a, qb_m)
    assert (s_a - s_m).abs().max() <= 1e-5  # compacted vs masked, batch 1
    assert (s_a[0] - m_a[0]).abs().max() <= 1e-5  # compacted batch 1 vs masked row of a batch
    assert (m_a - m_m).abs().max() <= 1e-5
    dense, _ = generate(build(arch), prompt, 8)
    assert (dense - s_a).abs().max() > 1e-3  # the mask really prunes


def test_static_applies_its_mask_to_every_position_and_request(tok):
    model = build("llama")
    reference = build("llama")
    s = build_strategy("static", sparsity=0.5, score="wanda", calibration=SMALL_CAL)
    s.attach(model, tok)
    masks = s.controller.masks()[:, 0]
    # the reference: the same mask as a 0/1 factor on the dense model's down_proj input
    hooks = [layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, l=l: (a[0] * masks[l].float(),))
             for l, layer in enumerate(reference.model.layers)]
    ids = rows(3, T=10, seed=8)
    with torch.no_grad():
        want = reference(ids).logits
        got_batch = model(ids).logits
        got_single = torch.cat([model(ids[i : i + 1]).logits for i in range(3)])  # three compacted requests
        got_score = s.controller.score(model, ids, torch.tensor([4, 6, 9]))  # the lm-eval path: every position
    for h in hooks:
        h.remove()
    for got in (got_batch, got_single, got_score):
        assert (got - want).abs().max() <= 1e-5
    c = s.controller
    assert c.counts.builds == 1 and c.counts.requests == 5 and float(c.counts.tokens_traced) == 0.0
    assert float(c.counts.tokens_seen) == 3 * 10 * 3
    assert c.stats.A.numel() == 0  # no statistics are kept


@pytest.mark.parametrize("strategy", ["static", "cats", "teal", "wina"])
def test_batch_invariance(tok, strategy):
    model = build("llama")
    knobs = {} if strategy == "wina" else {"calibration": SMALL_CAL}
    s = build_strategy(strategy, sparsity=0.6, **knobs)  # per-token ones: the prompt dense, generation sparse
    s.attach(model, tok)
    ids = rows(4, T=11, seed=9)
    with torch.no_grad():
        batch = model(ids).logits
        single = torch.cat([model(ids[i : i + 1]).logits for i in range(4)])
    assert (batch - single).abs().max() <= 1e-5
    gb, qb = generate(model, ids, 6)
    singles = [generate(model, ids[i : i + 1], 6) for i in range(4)]
    assert torch.equal(qb, torch.cat([q for _, q in singles]))
    assert (gb - torch.cat([g for g, _ in singles])).abs().max() <= 1e-5
    s.detach()


@pytest.mark.parametrize("strategy", ["static", "cats", "teal", "wina"])
@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_detach_restores_the_model_bit_for_bit(tok, strategy, arch):
    original, model = build(arch), build(arch)
    knobs = {} if strategy in ("static", "wina") else {"prompt": "sparse"}
    s = build_strategy(strategy, sparsity=0.5, **knobs, **({} if strategy == "wina" else {"calibration": SMALL_CAL}))
    s.attach(model, tok)
    generate(model, rows(1, seed=2), 4)
    s.detach()
    ref = dict(original.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, ref[name]) and p.is_contiguous() == ref[name].is_contiguous(), name
    assert not model._forward_pre_hooks
    ids = rows(2, seed=4)
    assert torch.equal(model(ids).logits, original(ids).logits)


def test_static_summary(tok):
    model = build("llama", layers=3)
    s = build_strategy("static", sparsity=0.7, score="act_norm", calibration=SMALL_CAL, ranking="max")
    s.attach(model, tok)
    generate(model, rows(1), 5)
    s.detach()
    out = s.summary()
    keep = math.floor(0.3 * 64)  # 19
    assert out["sparsity"]["target"] == pytest.approx(1 - keep / 64)
    assert out["sparsity"]["achieved"] == pytest.approx(1 - keep / 64)
    assert out["sparsity"]["per_layer"]["achieved"] == pytest.approx([1 - keep / 64] * 3)
    assert out["overhead"]["mask_builds"] == 1 and out["overhead"]["tokens_traced"] == 0
    assert out["overhead"]["tokens_seen"] == 12 + 4
    assert out["overhead"]["state_breakdown"]["statistics"] == 0
    assert out["strategy"]["dynamic"] is False and out["drift"]["enabled"] is False
    assert out["strategy"]["calibration"]["tokens"] == 1024 and out["strategy"]["calibration"]["source"] == "calibration"
    assert out["strategy"]["ignored"] == {"ranking": "max"}
    assert out["strategy"]["spec"]["ranking"] == "magnitude"


# ------------------------------------------------------------------------------------ strategy=cats
def test_cats_thresholds_are_the_calibration_quantile(tok):
    model = build("llama")
    spec = calibration_spec(**SMALL_CAL)
    cal = calibrate(model, spec.sequences(tok), gate_sample=10**9)
    s = build_strategy("cats", sparsity=0.4, calibration=SMALL_CAL, prompt="sparse")
    s.attach(model, tok)
    n = 1024 * 64
    k = math.floor(0.4 * n)
    for l in range(2):
        values = cal.gate_values[l].sort().values
        assert values.numel() == n
        assert s.calibration_info["thresholds"][l] == values[k].item()  # the (k+1)-th smallest |act(gate x)|
        assert s.calibration_info["calibration_sparsity"][l] == pytest.approx(k / n)
    # run the calibration text again: layer 0 sees exactly the calibration inputs, so it zeroes exactly k of n
    with torch.no_grad():
        for ids in spec.sequences(tok):
            model(ids[None])
    s.detach()
    out = s.summary()
    assert out["sparsity"]["per_layer"]["achieved"][0] == k / n
    assert out["sparsity"]["per_layer"]["achieved"][1] == pytest.approx(0.4, abs=0.05)  # its input changed
    assert out["sparsity"]["target"] == 0.4
    assert out["overhead"]["tokens_seen"] == 1024
    assert out["overhead"]["flops_ratio"] > 0


def test_cats_counts_only_evaluated_tokens(tok):
    model = build("llama")
    s = build_strategy("cats", sparsity=0.5, calibration=SMALL_CAL, prompt="sparse")
    s.attach(model, tok)
    e = s.engine
    ids = rows(2, T=8)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # three padding positions
    zeros = []
    # the expected count, from the thresholded gate activations of the valid positions
    x_in = {}
    hooks = [layer.mlp.register_forward_pre_hook(lambda m, a, l=l: x_in.__setitem__(l, a[0]))
             for l, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model(ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    for l in range(2):
        g, _ = ffn_activations(e.ffns[l].w, x_in[l])
        dropped = (g.abs() < e.rule.t[l]) | (g == 0)
        zeros.append((dropped.sum(-1) * mask).sum().item())
    assert float(e.tokens) == 13.0
    assert [float(z) for z in e.zeros] == zeros
    with s.paused():  # the dense reference counts nothing
        model(ids, attention_mask=mask)
    assert float(e.tokens) == 13.0 and [float(z) for z in e.zeros] == zeros
    s.detach()


def test_cats_on_a_plain_ffn_thresholds_act_fc(tok):
    model = build("gpt2")
    s = build_strategy("cats", sparsity=0.5, calibration=SMALL_CAL, prompt="sparse")
    s.attach(model, tok)
    e = s.engine
    assert isinstance(e, PerTokenEngine) and not e.ffns[0].w.gated
    x = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(0))
    mlp = e.ffns[0].original
    g = mlp.act(mlp.c_fc(x))
    want = mlp.c_proj(torch.where(g.abs() >= e.rule.t[0], g, 0.0))
    with torch.no_grad():
        assert (e.ffns[0](x) - want).abs().max() <= 1e-5
    s.detach()


# ------------------------------------------------------------------------------------ knobs
@pytest.mark.parametrize("make, pieces", [
    (lambda: build_strategy("static", score="magic"), ["strategy.score='magic'", "act_norm", "wanda", "weight"]),
    (lambda: build_strategy("static", calibration={"source": "news"}), ["strategy.calibration.source='news'", "calibration"]),
    (lambda: build_strategy("cats", calibration={"tokens": 0}), ["strategy.calibration.tokens=0", "integer >= 1"]),
    (lambda: build_strategy("cats", calibration={"seq_len": 1.5}), ["strategy.calibration.seq_len=1.5", "integer >= 1"]),
    (lambda: build_strategy("cats", calibration={"sample": -3}), ["strategy.calibration.sample=-3"]),
    (lambda: build_strategy("cats", sparsity=1.2), ["sparsity=1.2", "[0, 1)"]),
    (lambda: build_strategy("static", drift={"enabled": True}), ["drift.enabled", "strategy=dart"]),
])
def test_bad_knobs_fail_with_the_allowed_values(make, pieces):
    with pytest.raises(ConfigError) as err:
        make()
    for piece in pieces:
        assert piece in str(err.value)


def test_more_calibration_tokens_than_the_text_holds(tok):
    with pytest.raises(ConfigError) as err:
        build_strategy("static", calibration={"tokens": 10**7}).attach(build("llama"), tok)
    msg = str(err.value)
    n = len(tok(CALIBRATION_TEXT(), add_special_tokens=False)["input_ids"])
    assert "strategy.calibration.tokens=10000000" in msg and f"1..{n}" in msg


# ------------------------------------------------------------------------------------ calibration data
def CALIBRATION_TEXT():
    from dart.data.texts import CALIBRATION_SOURCES

    return CALIBRATION_SOURCES["calibration"]()


def _grams(text, n=8):
    w = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def _evaluation_texts() -> list[str]:
    from dart.data.texts import news_articles, wiki_documents
    from dart.data.wiki import summarization_pairs

    texts = list(news_articles()) + list(wiki_documents())
    texts += [p["document"] + "\n" + p["summary"] for p in summarization_pairs()]
    repo = Path(__file__).resolve().parents[1]
    for path in sorted((repo / "dart" / "evals").rglob("*")):  # offline benchmark items, drift prompts
        if path.is_file() and path.suffix in (".jsonl", ".json", ".yaml"):
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
    return texts


def test_calibration_text_is_disjoint_from_every_evaluation_text():
    from dart.data.texts import calibration_documents, news_articles

    cal = calibration_documents()
    assert len(cal) == 63 and sum(len(d.split()) for d in cal) > 8000  # 50 news articles + 13 paragraphs
    evaluation = _evaluation_texts()
    assert len(evaluation) > 400
    normalise = lambda t: " ".join(re.findall(r"[a-z0-9]+", t.lower()))  # noqa: E731
    eval_docs = {normalise(t) for t in evaluation}
    assert not any(normalise(d) in eval_docs for d in cal)  # no shared document
    eval_grams = set().union(*(_grams(t) for t in evaluation))
    cal_grams = set().union(*(_grams(d) for d in cal))
    assert len(cal_grams) > 7000
    assert not cal_grams & eval_grams  # no shared 8-word sequence
    # the check can fail: a sentence copied from a news article is caught
    leaked = cal[0] + " " + " ".join(news_articles()[17].split()[:12])
    assert _grams(leaked) & eval_grams


# ------------------------------------------------------------------------------------ command line
def test_cli_static_writes_results(tmp_path):
    proc = run_cli("model=tiny_llama", "strategy=static", "eval=smoke", "logger=none", "sparsity=0.6",
                   "strategy.calibration.tokens=2048", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["status"] == "complete" and res["strategy"]["name"] == "static"
    target = 1 - math.floor(0.4 * 256) / 256  # tiny_llama: intermediate 256, keep 102
    assert res["sparsity"]["target"] == pytest.approx(target)
    assert res["sparsity"]["achieved"] == pytest.approx(target)
    assert res["sparsity"]["per_layer"]["achieved"] == pytest.approx([target] * 4)
    assert res["overhead"]["mask_builds"] == 1 and res["overhead"]["tokens_seen"] > 0
    assert res["overhead"]["flops_ratio"] > 0
    assert res["strategy"]["calibration"]["tokens"] == 2048
    assert res["metrics"]["smoke/news"] > 1.0
    assert res["eval"]["mode"] == "prefill"  # input-independent: one forward per window


def test_cli_bad_static_score_fails_early(tmp_path):
    proc = run_cli("model=tiny_llama", "strategy=static", "strategy.score=magic", "logger=none", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    err = proc.stderr + proc.stdout
    assert "strategy.score='magic'" in err and "act_norm" in err and "Traceback" not in err
