"""TEAL as published (strategy=teal_published): the greedy allocation on a hand-built error and on a real block (it
reaches the target weighted sparsity, every step raises the projection whose trial error is least, TEAL's lookup), the
block evaluator against the model's own layer with thresholded inputs, thresholds from sorted calibration values, and
effective sparsity in both units (over the FFN, over all seven projections) from hand counts."""
from __future__ import annotations

import pytest
import torch

from dart.compose import build_strategy
from dart.errors import ConfigError
from dart.strategies.calibration_stats import quantile_threshold, sorted_threshold
from dart.strategies.per_token_engine import PerTokenEngine
from dart.strategies.per_token_rules import TealPublishedRule
from dart.strategies.teal_block import BlockEvaluator, layer_inputs, reference_output, sizes
from dart.strategies.teal_greedy import PROJECTIONS, GreedySpec, greedy, pick, projection_weights, weighted
from tests.conftest import tiny_gpt2, tiny_llama

SMALL_CAL = {"tokens": 1024, "seq_len": 256}
# Llama-3-8B's weights in TEAL's weight_dict: q 1, k 1/4, v 1/4, o 1, gate / up / down 3.5 (sum 13)
W8B = {"q": 1.0, "k": 0.25, "v": 0.25, "o": 1.0, "gate": 3.5, "up": 3.5, "down": 3.5}


@pytest.fixture(scope="module")
def tok():
    from dart.models.tokenizers import tiny_tokenizer

    return tiny_tokenizer()


def test_weights_are_parameter_counts_relative_to_q():
    m = tiny_llama(layers=1)  # hidden 32, 4 heads of 8, 2 KV heads: k and v 16 x 32; FFN 64 x 32
    w = projection_weights(sizes(m.model.layers[0]))
    assert w == {"q": 1.0, "k": 0.5, "v": 0.5, "o": 1.0, "gate": 2.0, "up": 2.0, "down": 2.0}
    assert weighted({p: 1.0 for p in PROJECTIONS}, w) == 1.0
    assert weighted({**{p: 0.0 for p in PROJECTIONS}, "gate": 0.5}, w) == pytest.approx(0.5 * 2 / 9)


def test_greedy_on_a_hand_built_error():
    """error(s) = sum_p c_p s_p^2 with q, k cheap and down dear: every step adds step / sum(w) to the weighted
    sparsity, takes the projection whose trial is least (ties: the first in q, k, v, o, gate, up, down order), and the
    last row is the first at or past `until`."""
    cost = {"q": 1.0, "k": 1.0, "v": 4.0, "o": 2.0, "gate": 3.0, "up": 3.0, "down": 50.0}
    err = lambda s: sum(cost[p] * s[p] ** 2 for p in PROJECTIONS)  # noqa: E731
    rows = greedy(err, W8B, until=0.1, step=0.05)
    per_step = 0.05 / 13
    assert [r["sparsity"] for r in rows] == pytest.approx([per_step * (i + 1) for i in range(len(rows))])
    assert rows[-1]["sparsity"] >= 0.1 > rows[-2]["sparsity"]
    # replay: each row's change is the argmin over the trials from the previous state
    state = {p: 0.0 for p in PROJECTIONS}
    for r in rows:
        trials = {}
        for p in PROJECTIONS:
            t = dict(state)
            t[p] += 0.05 / W8B[p]
            trials[p] = err(t)
        best = min(PROJECTIONS, key=lambda p: (trials[p], PROJECTIONS.index(p)))
        state[best] += 0.05 / W8B[best]
        assert {p: r[p] for p in PROJECTIONS} == pytest.approx(state)
        assert r["error"] == pytest.approx(trials[best])
    # by hand: the first step of q costs 1 * 0.05^2, of k 1 * 0.2^2, of gate 3 * (0.05/3.5)^2 = 0.00061: gate wins,
    # then up (same), then q (0.0025) against gate's second (3 * (0.1/3.5)^2 = 0.00245 + ...): gate again
    assert [max(PROJECTIONS, key=lambda p: r[p] - prev[p]) for prev, r in zip([dict.fromkeys(PROJECTIONS, 0.0)] + rows,
                                                                               rows)][:3] == ["gate", "up", "gate"]


def test_greedy_skips_projections_at_one_and_lookup_takes_the_closest_row():
    rows = greedy(lambda s: -s["k"], W8B, until=0.3, step=0.25)  # k's step 1.0: it reaches 1 in one step, then no more
    assert rows[0]["k"] == 1.0 and all(r["k"] == 1.0 for r in rows)
    assert pick(rows, 0.0)["sparsity"] == 0.0 and pick([], 0.5)["q"] == 0.0
    xs = [{"sparsity": v} for v in (0.1, 0.2, 0.3, 0.4)]
    assert pick(xs, 0.26)["sparsity"] == 0.3 and pick(xs, 0.25)["sparsity"] == 0.2  # a tie: the first
    assert pick(xs, 0.9)["sparsity"] == 0.4


def test_greedy_spec_checks_its_values():
    assert GreedySpec.from_dict(None) == GreedySpec(step=0.05, until=0.9, last_fraction=0.25, sequences=2)
    for bad, word in (({"step": 0}, "step"), ({"until": 1.5}, "until"), ({"last_fraction": 0.6}, "last_fraction"),
                      ({"sequences": 0}, "sequences"), ({"stpe": 0.1}, "stpe")):
        with pytest.raises(ConfigError, match=word):
            GreedySpec.from_dict(bad)
    with pytest.raises(ConfigError, match="above strategy.greedy.until"):
        build_strategy("teal_published", sparsity=0.8, greedy={"until": 0.7})


def test_evaluator_equals_the_model_layer_with_thresholded_inputs():
    """The fast block error path (q, o and the FFN on the error's positions, the first half's keys and values dense,
    parts reused between trials) against the model's own decoder layer with every projection's input thresholded on
    the last half of the positions by hooks: equal (fp32), at finite, zero and infinite thresholds."""
    m = tiny_llama(layers=2)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    inputs, pe = layer_inputs(m, ids)
    for th in ({"q": 0.5, "k": 0.3, "v": 0.2, "o": 0.1, "gate": 0.4, "up": 0.6, "down": 0.05},
               {"q": 0.0, "k": float("inf"), "v": 0.0, "o": float("inf"), "gate": 0.0, "up": 1.0, "down": 0.0}):
        for l in range(2):
            ev = BlockEvaluator(m.model.layers[l], m.config, inputs[l], pe, lambda p, s: s, 0.25)
            got = ev.output(th)
            want = reference_output(m.model.layers[l], inputs[l], pe, th, 0.25)
            assert got.shape == (2, 4, 32)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    # all dense: the layer's own output on those positions (the next layer's input)
    ev = BlockEvaluator(m.model.layers[0], m.config, inputs[0], pe, lambda p, s: s, 0.25)
    torch.testing.assert_close(ev.output(dict.fromkeys(PROJECTIONS, 0.0)), inputs[1][:, 12:], atol=1e-6, rtol=1e-5)


def test_each_greedy_step_on_a_real_block_takes_the_least_error():
    """On a tiny Llama block with quantile thresholds of its own inputs: replaying the trajectory, every step's
    projection is the one whose trial block error (from the exact path) is least, and the weighted sparsity passes
    the target on the last row only."""
    m = tiny_llama(layers=1)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    inputs, pe = layer_inputs(m, ids)
    vals = {}

    def keep(k):
        def fn(mod, a):
            vals[k] = a[0].abs().flatten().sort().values  # (returns None: the input unchanged)
        return fn

    hooks = [mod.register_forward_pre_hook(keep(k))
             for k, mod in (("attn_in", m.model.layers[0].self_attn.q_proj), ("attn_out", m.model.layers[0].self_attn.o_proj),
                            ("input", m.model.layers[0].mlp.gate_proj), ("down", m.model.layers[0].mlp.down_proj))]
    with torch.no_grad():
        m(ids)
    for h in hooks:
        h.remove()
    from dart.strategies.teal_greedy import INPUT_OF

    th = lambda p, s: sorted_threshold(vals[INPUT_OF[p]], s)  # noqa: E731
    layer, w = m.model.layers[0], projection_weights(sizes(m.model.layers[0]))
    ev = BlockEvaluator(layer, m.config, inputs[0], pe, th, 0.25)
    rows = greedy(ev.error, w, until=0.3, step=0.1, committed=ev.committed)
    target = reference_output(layer, inputs[0], pe, dict.fromkeys(PROJECTIONS, 0.0), 0.25)
    state = dict.fromkeys(PROJECTIONS, 0.0)
    for r in rows:
        errs = {}
        for p in PROJECTIONS:
            if state[p] >= 1.0:  # fully sparse already: not a candidate
                continue
            t = dict(state)
            t[p] += 0.1 / w[p]
            new = reference_output(layer, inputs[0], pe, {q: th(q, t[q]) for q in PROJECTIONS}, 0.25)
            errs[p] = float(torch.linalg.vector_norm(target - new, dim=1).mean())
        chosen = next(p for p in PROJECTIONS if r[p] != state[p])
        assert errs[chosen] == pytest.approx(min(errs.values()), rel=1e-5)
        assert r["error"] == pytest.approx(errs[chosen], rel=1e-5)
        state[chosen] = r[chosen]
    assert rows[-1]["sparsity"] >= 0.3 > rows[-2]["sparsity"]
    assert any(v >= 1.0 for v in state.values())  # (k or v, a small step's multiple, reached 1 on the way)


def test_sorted_threshold_is_the_quantile_threshold():
    v = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    s = v.sort().values
    for sp in (0.0, 0.001, 0.25, 0.5, 0.999):
        assert sorted_threshold(s, sp) == quantile_threshold(v, sp).item()
    assert sorted_threshold(s, 1.0) == float("inf") == quantile_threshold(v, 1.2).item()


def _rule(model, **t) -> TealPublishedRule:
    L = len(model.model.layers)
    return TealPublishedRule({p: [torch.tensor(t.get(p, 0.0))] * L for p in PROJECTIONS})


def test_effective_sparsity_in_both_units_by_hand():
    """Hand-set thresholds on a tiny Llama (D 32, I 64; q, o 32 x 32, k, v 16 x 32): q's input zeroed whole (inf) skips
    32 x 32 attention weights per token and nothing of the FFN; gate's input zeroed whole skips I x D of the FFN's
    3ID, and since then a = silu(0) * up x = 0, the down projection's I x D too. `effective` is over the FFN,
    `effective_model` over the four attention projections and the FFN."""
    m = tiny_llama(layers=2)
    ids = torch.randint(1, 128, (1, 6), generator=torch.Generator().manual_seed(2))
    attn_w, ffn_w = 32 * 32 * 2 + 16 * 32 * 2, 3 * 64 * 32
    for t, ffn_skip, attn_skip in (({"q": float("inf")}, 0, 32 * 32),
                                   ({"gate": float("inf")}, 2 * 64 * 32, 0),
                                   ({"up": float("inf")}, 2 * 64 * 32, 0),
                                   ({"q": float("inf"), "o": float("inf"), "gate": float("inf")}, 2 * 64 * 32,
                                    2 * 32 * 32)):
        e = PerTokenEngine(m, _rule(m, **t), prompt="sparse").attach()
        with torch.no_grad():
            m(ids)
        got = e.measure()
        e.detach()
        assert got["tokens"]["sparse"] == 6
        assert got["effective"] == pytest.approx(ffn_skip / ffn_w)
        assert got["effective_model"] == pytest.approx((ffn_skip + attn_skip) / (ffn_w + attn_w))
    # an FFN-only method on the same model: its model-wide share is the FFN's skipped reads over all seven
    e = PerTokenEngine(m, _rule(m), prompt="sparse")
    assert e.attention is None and e._attention_weights() == attn_w


def test_masked_execution_zeroes_each_projection_input_at_its_threshold():
    """q, k, v (one input, three thresholds), o, gate and up (one input, two thresholds) and down: the engine's masked
    forward against the plain layer with each projection's input zeroed by hand; the model is back on detach."""
    m = tiny_llama(layers=1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ids = torch.randint(1, 128, (1, 7), generator=torch.Generator().manual_seed(3))
    t = {"q": 0.3, "k": 0.8, "v": 0.1, "o": 0.05, "gate": 0.6, "up": 0.2, "down": 0.01}
    e = PerTokenEngine(m, _rule(m, **t), prompt="sparse").attach()
    with torch.no_grad():
        got = m(ids).logits
    e.detach()
    hooks = []
    layer = m.model.layers[0]
    for p, mod in (("q", layer.self_attn.q_proj), ("k", layer.self_attn.k_proj), ("v", layer.self_attn.v_proj),
                   ("o", layer.self_attn.o_proj), ("gate", layer.mlp.gate_proj), ("up", layer.mlp.up_proj),
                   ("down", layer.mlp.down_proj)):
        hooks.append(mod.register_forward_pre_hook(lambda mod, a, p=p: (torch.where(a[0].abs() >= t[p], a[0], 0.0),)))
    with torch.no_grad():
        want = m(ids).logits
    for h in hooks:
        h.remove()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_strategy_reaches_its_weighted_target_per_layer(tok, tmp_path, monkeypatch):
    """On a tiny Llama: every layer's row is the trajectory's closest to the target (within one step of it), its
    thresholds are the calibration quantiles at its projections' sparsities, and a second attach reads the cache."""
    monkeypatch.setenv("DART_CACHE", str(tmp_path / "cache"))
    m = tiny_llama(layers=2, vocab=1024)
    w = projection_weights(sizes(m.model.layers[0]))
    s = build_strategy("teal_published", sparsity=0.4, calibration=SMALL_CAL, greedy={"step": 0.2, "sequences": 1})
    s.attach(m, tok)
    assert m.model.layers[0].mlp.gate_proj is m.model.layers[0].mlp.original.gate_proj  # the wrapped FFN's, reached
    info = s.calibration_info
    for l in range(2):
        assert abs(info["weighted_sparsity"][l] - 0.4) <= 0.5 * 0.2 / sum(w.values()) + 1e-9
        sp = {p: info["sparsities"][p][l] for p in PROJECTIONS}
        assert weighted(sp, w) == pytest.approx(info["weighted_sparsity"][l])
    s.detach()
    s2 = build_strategy("teal_published", sparsity=0.4, calibration=SMALL_CAL, greedy={"step": 0.2, "sequences": 1})
    s2.attach(m, tok)
    assert s2.calibration_info["thresholds"] == info["thresholds"]
    s2.detach()


def test_other_architectures_get_a_clear_error(tok):
    s = build_strategy("teal_published", sparsity=0.5, calibration=SMALL_CAL)
    with pytest.raises(ConfigError, match="teal_published.*not 'gpt2'"):
        s.attach(tiny_gpt2(layers=1, vocab=1024), tok)


def test_a_stop_signal_ends_the_allocation_at_the_next_trial():
    """The greedy runs the layers without an embedding forward (where the run's stop hook sits): its trials check the
    flag themselves."""
    import signal as sig

    from dart import signals

    m = tiny_llama(layers=1)
    inputs, pe = layer_inputs(m, torch.randint(0, 128, (1, 8)))
    ev = BlockEvaluator(m.model.layers[0], m.config, inputs[0], pe, lambda p, s: s, 0.25)
    signals._handler(sig.SIGTERM, None)
    try:
        with pytest.raises(signals.Terminated):
            greedy(ev.error, projection_weights(sizes(m.model.layers[0])), until=0.5, step=0.1)
    finally:
        signals.reset()
