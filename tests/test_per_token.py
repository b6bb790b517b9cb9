"""Per-token methods (dart.strategies.per_token): TEAL's thresholds and masks, WINA's top-k by |x| times the column
norm, both against hand-built activations and against a plain FFN that zeroes the same inputs; effective sparsity
(the FFN weight reads a sparse kernel would skip) from hand counts; calibration hitting its target; the command line's
defaults and a run on the tiny model."""
from __future__ import annotations

import json
import math

import pytest
import torch

from dart.compose import build_strategy, calibration_spec
from dart.engine.adapters import FFNWeights
from dart.strategies.calibration_stats import calibrate, quantile_threshold
from dart.strategies.per_token_rules import TealRule, WinaRule, keep_count, keep_top
from tests.conftest import run_cli, tiny_gpt2, tiny_llama

SMALL_CAL = {"tokens": 1024, "seq_len": 256}
# gated, D = 3, I = 4, act = identity (every activation a small number)
GATE = torch.tensor([[1.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 0.0], [2.0, 0.0, -1.0]])
UP = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 2.0], [0.0, 2.0, 0.0]])
DOWN_T = torch.tensor([[3.0, 4.0, 0.0], [10.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.1, 0.0, 1.0]])  # row j = W_down[:, j]


def ffn(gated: bool = True) -> FFNWeights:
    return FFNWeights(gated=gated, w_in=[GATE.clone(), UP.clone()] if gated else [GATE.clone()],
                      b_in=[None, None] if gated else [None], w_down_t=DOWN_T.clone(), b_down=None, act=lambda t: t)


@pytest.fixture(scope="module")
def tok():
    from dart.models.tokenizers import tiny_tokenizer

    return tiny_tokenizer()


def test_teal_masks_and_counts_by_hand():
    # x = (0.5, -2, 1): |x| >= 1 keeps (0, -2, 1); gate x' = (1, -6, -2, -1), up x' = (0, -1, 2, -4)
    # a = (0, 6, -4, 4); |a| >= 4.5 keeps (0, 6, 0, 0); out = 6 * (10, 0, 0) = (60, 0, 0)
    rule = TealRule([torch.tensor(1.0)], [torch.tensor(4.5)])
    out, zeroed, skipped = rule.forward(0, ffn(), torch.tensor([[[0.5, -2.0, 1.0]]]))
    assert out.tolist() == [[[60.0, 0.0, 0.0]]]
    # 1 input zeroed skips a column of gate and of up (2 x I = 8 weights), 3 of a skip 3 rows of down (3 x D = 9)
    assert skipped.tolist() == [[8 + 9]] and torch.equal(zeroed, skipped)
    # of the FFN's 3 I D = 36 weights a sparse kernel would skip 17 for this token


def test_wina_keeps_the_top_k_of_x_times_the_column_norm_by_hand():
    w = ffn()
    # column norms: gate (sqrt 6, 3, sqrt 2) = (2.449, 3, 1.414), up (1, sqrt 5, sqrt 5); down rows (5, 10, 0.5, 1.005)
    norms_in = [[torch.linalg.vector_norm(m, dim=0) for m in w.w_in]]
    norms_down = [torch.linalg.vector_norm(w.w_down_t, dim=1)]
    x = torch.tensor([[[1.0, -0.5, 1.2]]])
    # sparsity 0.34: k_in = floor(0.66 * 3) = 1, k_down = floor(0.66 * 4) = 2
    # gate scores |x| * c = (2.449, 1.5, 1.697): keeps input 0 -> gate x = (1, 0, 1, 2)
    # up scores (1, 1.118, 2.683): keeps input 2 -> up x = (0, 1.2, 2.4, 0)
    # a = (0, 0, 2.4, 0): scores (0, 0, 1.2, 0): top 2 keeps 2 (and one zero); out = 2.4 * (0, 0.5, 0) = (0, 1.2, 0)
    rule = WinaRule(norms_in, norms_down, 0.34)
    assert keep_count(3, 0.34) == 1 and keep_count(4, 0.34) == 2
    out, zeroed, skipped = rule.forward(0, w, x)
    assert torch.allclose(out, torch.tensor([[[0.0, 1.2, 0.0]]]))
    # zeroed: 2 inputs of gate and 2 of up (I = 4 weights each) + 3 entries of a that are 0 (D = 3 weights each)
    assert skipped.tolist() == [[2 * 4 + 2 * 4 + 3 * 3]]
    # keep_top is an exact top-k per token
    s = torch.tensor([[3.0, 1.0, 2.0, 5.0], [0.0, -1.0, 4.0, 1.0]])
    assert keep_top(s, 2).tolist() == [[True, False, False, True], [False, False, True, True]]


@pytest.mark.parametrize("name", ["teal", "wina"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_masked_execution_equals_a_plain_ffn_zeroing_the_same_inputs(tok, name, arch):
    model = (tiny_llama if arch == "llama" else tiny_gpt2)(layers=2, vocab=1024)
    s = build_strategy(name, sparsity=0.5, prompt="sparse", **({"calibration": SMALL_CAL} if name == "teal" else {}))
    s.attach(model, tok)
    f = s.engine.ffns[0]
    mlp = f.original
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = f(x)
        up = (lambda v: mlp.up_proj(v)) if arch == "llama" else None
        gate = (lambda v: mlp.act_fn(mlp.gate_proj(v))) if arch == "llama" else (lambda v: mlp.act(mlp.c_fc(v)))
        out_proj = mlp.down_proj if arch == "llama" else mlp.c_proj
        gate_w = mlp.gate_proj.weight if arch == "llama" else mlp.c_fc.weight.t()
        if name == "teal":
            rule = s.engine.rule
            xm = torch.where(x.abs() >= rule.t_in[0], x, 0.0)
            a = gate(xm) * up(xm) if up else gate(xm)
            want = out_proj(torch.where(a.abs() >= rule.t_down[0], a, 0.0))
        else:
            k_in, k_down = keep_count(32, 0.5), keep_count(64, 0.5)
            top = lambda score, k: torch.zeros_like(score, dtype=torch.bool).scatter_(  # noqa: E731
                -1, score.topk(k, dim=-1).indices, True)
            xg = torch.where(top(x.abs() * gate_w.norm(dim=0), k_in), x, 0.0)
            if up:
                xu = torch.where(top(x.abs() * mlp.up_proj.weight.norm(dim=0), k_in), x, 0.0)
                a = gate(xg) * up(xu)
            else:
                a = gate(xg)
            down_w = mlp.down_proj.weight if arch == "llama" else mlp.c_proj.weight.t()
            want = out_proj(torch.where(top(a.abs() * down_w.norm(dim=0), k_down), a, 0.0))
        assert (got - want).abs().max().item() <= 1e-5
        with s.paused():  # the dense reference
            assert (f(x) - mlp(x)).abs().max().item() <= 1e-5
    s.detach()


def test_teal_thresholds_reach_the_target_on_the_calibration_text(tok):
    model = tiny_llama(layers=2, vocab=1024)
    spec = calibration_spec(**SMALL_CAL)
    cal = calibrate(model, spec.sequences(tok), values=("input", "down"), sample=10**9)
    s = build_strategy("teal", sparsity=0.4, calibration=SMALL_CAL, prompt="sparse")
    s.attach(model, tok)
    for l in range(2):
        assert s.calibration_info["thresholds_input"][l] == quantile_threshold(cal.values["input"][l], 0.4).item()
        assert s.calibration_info["thresholds_down"][l] == quantile_threshold(cal.values["down"][l], 0.4).item()
    # layer 0 sees exactly the calibration inputs: its x is zeroed at the target, within a point
    seen = []
    hook = model.model.layers[0].mlp.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        for ids in spec.sequences(tok):
            model(ids[None])
    hook.remove()
    x = torch.cat([v.reshape(-1, 32) for v in seen])
    z_in = (x.abs() < s.engine.rule.t_in[0]).float().mean().item()
    assert z_in == pytest.approx(0.4, abs=0.01)
    s.detach()
    out = s.summary()["sparsity"]
    assert out["effective"] == pytest.approx(0.4, abs=0.03) and out["achieved"] == out["effective"]
    assert "masked" in out["execution"]


def test_cats_effective_is_the_weight_reads_it_skips(tok):
    model = tiny_llama(layers=2, vocab=1024)
    s = build_strategy("cats", sparsity=0.5, calibration=SMALL_CAL)  # prompt=dense: the prompt's forward is dense
    s.attach(model, tok)
    ids = torch.randint(3, 1024, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(ids[:, :10], use_cache=True)
        assert float(s.engine.tokens) == 0 and float(s.engine.prompt_tokens) == 10
        with s.paused():
            dense = model(ids[:, :10]).logits
        assert torch.equal(out.logits, dense)  # the prompt ran dense
        model(ids[:, 10:], past_key_values=out.past_key_values, use_cache=True)  # the continuation: sparse
    s.detach()
    sp = s.summary()["sparsity"]
    assert sp["tokens"] == {"prompt": 10.0, "sparse": 6.0} and sp["achieved"] > 0.3
    # a zeroed g skips a row of up and of down, never the gate: 2/3 of the zeroed fraction of g
    assert sp["effective"] == pytest.approx(2 * sp["achieved"] / 3, rel=1e-9)
    assert all(e == pytest.approx(2 * a / 3) for e, a in zip(sp["per_layer"]["effective"], sp["per_layer"]["achieved"]))


@pytest.mark.parametrize("name", ["teal", "wina"])
def test_cli_defaults_and_a_run_on_the_tiny_model(tmp_path, name):
    s = build_strategy(name, sparsity=0.5)
    assert s.name == name and s.sparsity == 0.5 and s.dynamic and s.prompt == "dense"  # scored after the prompt
    proc = run_cli("model=tiny_llama", f"strategy={name}", "sparsity=0.5", "eval=switch", "eval.limit=2",
                   "eval.prefix=16", "eval.length=12", "logger=none", f"hydra.run.dir={tmp_path}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["sparsity"]["effective"] == pytest.approx(0.5, abs=0.03)
    assert res["metrics"]["switch/all/kl"] > 0 and math.isfinite(res["metrics"]["switch/all/kl"])
