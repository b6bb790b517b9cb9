"""Neuron scores (docs/method.md section 3) on hand-built activations, down projections and embeddings.

Every expected number below is worked out by hand in the comments; the activations are chosen so that the
statistics are small integers (or simple fractions)."""
from __future__ import annotations

import math

import pytest
import torch

from dart.engine.scoring import scores, static_weight, vocab_projection_priors
from dart.engine.stats import Statistics, ema_weights, token_values

# ---------------------------------------------------------------------------------------------- priors
# W_down^T as (I=4, D=2) neuron-major rows and the input embedding E (V=3, D=2).
W_DOWN_T = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]])
EMB = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]])
# P = W_down^T E^T (I x V):
#   neuron 0: [ 1,  0, -1]  -> pmax 1, pmean 2/3
#   neuron 1: [ 0,  2,  1]  -> pmax 2, pmean 1
#   neuron 2: [ 1,  2,  0]  -> pmax 2, pmean 1
#   neuron 3: [ 2, -2, -3]  -> pmax 3, pmean 7/3
PMAX = [1.0, 2.0, 2.0, 3.0]
PMEAN = [2 / 3, 1.0, 1.0, 7 / 3]


@pytest.mark.parametrize("chunk", [1, 2, 3, 8192])
def test_priors_by_hand(chunk):
    pmax, pmean = vocab_projection_priors(W_DOWN_T, EMB, chunk)
    assert pmax.tolist() == pytest.approx(PMAX, abs=1e-6)
    assert pmean.tolist() == pytest.approx(PMEAN, abs=1e-6)
    assert pmax.dtype == pmean.dtype == torch.float32


def test_priors_chunking_is_exact():
    """Chunk sizes 1, 2, 5, 7 and > V give bit-identical priors equal to the direct |W_down^T E^T|.
    Integer-valued tensors make every product and sum exact in fp32, so equality is exact."""
    g = torch.Generator().manual_seed(0)
    w = torch.randint(-3, 4, (6, 4), generator=g).float()
    E = torch.randint(-3, 4, (10, 4), generator=g).float()
    P = (w @ E.T).abs()
    direct_max, direct_mean = P.amax(dim=1), P.sum(dim=1) / 10
    for chunk in (1, 2, 5, 7, 10, 11, 8192):
        pmax, pmean = vocab_projection_priors(w, E, chunk)
        assert torch.equal(pmax, direct_max), chunk
        assert torch.equal(pmean, direct_mean), chunk


def test_priors_fp16_inputs_are_computed_in_fp32():
    pmax, pmean = vocab_projection_priors(W_DOWN_T.half(), EMB.half(), 2)
    assert pmax.dtype == torch.float32
    assert pmax.tolist() == pytest.approx(PMAX, abs=1e-6)
    assert pmean.tolist() == pytest.approx(PMEAN, abs=1e-3)


def test_static_weight_per_ranking():
    pmax, pmean = torch.tensor(PMAX), torch.tensor(PMEAN)
    assert static_weight("magnitude", pmax, pmean) is None
    assert static_weight("max", pmax, pmean).tolist() == pytest.approx(PMAX)
    assert static_weight("mean", pmax, pmean).tolist() == pytest.approx(PMEAN)
    assert static_weight("combined", pmax, pmean).tolist() == pytest.approx([5 / 3, 3, 3, 16 / 3])
    assert static_weight("product", pmax, pmean).tolist() == pytest.approx([2 / 3, 2, 2, 7])
    with pytest.raises(ValueError):
        static_weight("bogus", pmax, pmean)


# ---------------------------------------------------------------------------------------------- L2 mode
# Two tokens of one sequence, I = 4:   a_0 = [3, 0, 1, -2],  a_1 = [4, -2, 0, 0]
# A_j = sum_t a_tj^2 = [25, 4, 1, 4],   ||a_j|| = [5, 2, 1, 2]
ACT_L2 = torch.tensor([[[3.0, 0.0, 1.0, -2.0], [4.0, -2.0, 0.0, 0.0]]])
L2_EXPECTED = {
    "magnitude": [5, 2, 1, 2],
    "max": [1 * 5, 2 * 2, 2 * 1, 3 * 2],  # pmax * ||a||
    "mean": [2 / 3 * 5, 1 * 2, 1 * 1, 7 / 3 * 2],  # pmean * ||a||
    "combined": [5 / 3 * 5, 3 * 2, 3 * 1, 16 / 3 * 2],  # (pmax + pmean) * ||a||
    "product": [2 / 3 * 25, 2 * 4, 2 * 1, 7 * 4],  # pmax * pmean * ||a||^2
}


def _weight(ranking):
    w = static_weight(ranking, torch.tensor(PMAX), torch.tensor(PMEAN))
    return None if w is None else w[None, :]  # (L=1, I)


@pytest.mark.parametrize("ranking", sorted(L2_EXPECTED))
def test_l2_scores_by_hand(ranking):
    st = Statistics(1, 4, "l2", "cpu")
    st.reset(1)
    st.update(0, ACT_L2, torch.ones(1, 2), None)
    assert st.A[0, 0].tolist() == [25.0, 4.0, 1.0, 4.0]
    assert st.base()[0, 0].tolist() == [5.0, 2.0, 1.0, 2.0]
    sc = scores(ranking, st.base(), _weight(ranking))
    assert sc.shape == (1, 1, 4)
    assert sc[0, 0].tolist() == pytest.approx(L2_EXPECTED[ranking], rel=1e-6)


def test_l2_accumulates_over_forwards_and_respects_weights():
    """Two forwards add up; a zero weight (padding) contributes nothing; rows are independent."""
    st = Statistics(2, 4, "l2", "cpu")
    st.reset(2)
    a = torch.zeros(2, 3, 4)
    a[0] = torch.tensor([[9.0, 9.0, 9.0, 9.0], [3.0, 0.0, 1.0, -2.0], [4.0, -2.0, 0.0, 0.0]])  # first is padding
    a[1] = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    w = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    st.update(1, a, w, None)
    assert st.A[1, 0].tolist() == [25.0, 4.0, 1.0, 4.0]
    assert st.A[1, 1].tolist() == [2.0, 1.0, 1.0, 5.0]
    assert st.A[0].abs().sum() == 0  # another layer untouched
    st.update(1, torch.tensor([[[1.0, 0.0, 0.0, 0.0]], [[0.0, 0.0, 3.0, 0.0]]]), torch.ones(2, 1), None)
    assert st.A[1, 0].tolist() == [26.0, 4.0, 1.0, 4.0]
    assert st.A[1, 1].tolist() == [2.0, 1.0, 10.0, 5.0]
    st.clear_rows(torch.tensor([True, False]))
    assert st.A[1, 0].tolist() == [0.0] * 4
    assert st.A[1, 1].tolist() == [2.0, 1.0, 10.0, 5.0]


# ---------------------------------------------------------------------------------------------- EMA mode
def test_ema_weights_first_forward():
    """w_t = d^(T-1-t) / sum_s d^(T-1-s) over the valid tokens; left padding gets weight 0; decay 0 (fresh)."""
    d = 0.5
    valid = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    w, decay = ema_weights(valid, d, torch.tensor([True, True, True]))
    assert w[0].tolist() == pytest.approx([1 / 15, 2 / 15, 4 / 15, 8 / 15])  # d^3, d^2, d, 1 over 15/8
    assert w[1].tolist() == pytest.approx([0.0, 1 / 7, 2 / 7, 4 / 7])
    assert w[2].tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0])
    assert decay.tolist() == [0.0, 0.0, 0.0]
    assert w.sum(dim=1).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_ema_weights_later_forwards():
    """A <- d A + (1-d)|a| token by token: for n tokens at once, decay d^n and w_t = (1-d) d^(n-1-t)."""
    d = 0.5
    valid = torch.tensor([[1.0], [0.0], [1.0]])  # single decode token; row 1 is not traced this forward
    w, decay = ema_weights(valid, d, torch.tensor([False, False, False]))
    assert w[:, 0].tolist() == [0.5, 0.0, 0.5]
    assert decay.tolist() == [0.5, 1.0, 0.5]  # an untraced row keeps its statistic
    valid = torch.tensor([[0.0, 1.0, 1.0]])
    w, decay = ema_weights(valid, 0.25, torch.tensor([False]))
    assert w[0].tolist() == pytest.approx([0.0, 0.75 * 0.25, 0.75])
    assert decay.tolist() == pytest.approx([0.0625])


# First forward, d = 1/2, three tokens (the first row has one left-padding token):
#   w = [1, 2, 4] / 7;  |a_0| = [7, 0, 7, 14], |a_1| = [0, 7, 7, 0], |a_2| = [0, 0, 7, 7]
#   A = [7/7, 14/7, (7 + 14 + 28)/7, (14 + 28)/7] = [1, 2, 7, 6]
# A later single token |a| = [3, 0, 1, 2]: A <- A/2 + |a|/2 = [2, 1, 4, 4]
EMA_FIRST = torch.tensor([[-7.0, 0.0, 7.0, 14.0], [0.0, 7.0, -7.0, 0.0], [0.0, 0.0, 7.0, -7.0]])
EMA_EXPECTED = {
    "magnitude": [2, 1, 4, 4],
    "max": [1 * 2, 2 * 1, 2 * 4, 3 * 4],
    "mean": [2 / 3 * 2, 1 * 1, 1 * 4, 7 / 3 * 4],
    "combined": [5 / 3 * 2, 3 * 1, 3 * 4, 16 / 3 * 4],
    "product": [2 / 3 * 4, 2 * 1, 2 * 16, 7 * 16],  # pmax * pmean * A^2
}


def _ema_stats():
    d = 0.5
    st = Statistics(1, 4, "ema", "cpu")
    st.reset(2)
    a = torch.zeros(2, 4, 4)
    a[:, 1:] = EMA_FIRST
    a[0, 0] = 100.0  # left padding (different garbage in each row): must not count
    a[1, 0] = -3.0
    valid = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    w, decay = ema_weights(valid, d, torch.tensor([True, True]))
    st.update(0, a, w, decay)
    first = st.A[0].clone()
    w, decay = ema_weights(torch.ones(2, 1), d, torch.tensor([False, False]))
    new = torch.tensor([[[3.0, 0.0, -1.0, 2.0]], [[3.0, 0.0, -1.0, 2.0]]])
    st.update(0, new, w, decay)
    return st, first


def test_ema_statistic_numbers():
    st, first = _ema_stats()
    assert first[0].tolist() == pytest.approx([1.0, 2.0, 7.0, 6.0], rel=1e-6)
    assert first[1].tolist() == pytest.approx([1.0, 2.0, 7.0, 6.0], rel=1e-6)
    assert st.A[0, 0].tolist() == pytest.approx([2.0, 1.0, 4.0, 4.0], rel=1e-6)
    assert torch.equal(st.base(), st.A)  # EMA scores multiply A itself, not its square root


def test_ema_first_forward_ignores_stale_values():
    """decay 0 on a fresh row: whatever was in A before the first forward after a reset is dropped."""
    st = Statistics(1, 2, "ema", "cpu")
    st.reset(1)
    st.A.fill_(123.0)
    w, decay = ema_weights(torch.ones(1, 2), 0.5, torch.tensor([True]))
    st.update(0, torch.tensor([[[3.0, 0.0], [0.0, 3.0]]]), w, decay)  # w = [1/3, 2/3]
    assert st.A[0, 0].tolist() == pytest.approx([1.0, 2.0])


@pytest.mark.parametrize("ranking", sorted(EMA_EXPECTED))
def test_ema_scores_by_hand(ranking):
    st, _ = _ema_stats()
    sc = scores(ranking, st.base()[:, :1], _weight(ranking))
    assert sc[0, 0].tolist() == pytest.approx(EMA_EXPECTED[ranking], rel=1e-6)


def test_ema_token_by_token_equals_one_multi_token_update():
    """Two single-token updates equal one two-token update (decay d^2, w = [(1-d) d, 1-d])."""
    d = 0.3
    g = torch.Generator().manual_seed(0)
    a0 = torch.randn(1, 3, 5, generator=g)
    a1, a2 = torch.randn(1, 1, 5, generator=g), torch.randn(1, 1, 5, generator=g)
    s1, s2 = Statistics(1, 5, "ema", "cpu"), Statistics(1, 5, "ema", "cpu")
    for s in (s1, s2):
        s.reset(1)
        s.update(0, a0, *ema_weights(torch.ones(1, 3), d, torch.tensor([True])))
    for a in (a1, a2):
        s1.update(0, a, *ema_weights(torch.ones(1, 1), d, torch.tensor([False])))
    s2.update(0, torch.cat([a1, a2], dim=1), *ema_weights(torch.ones(1, 2), d, torch.tensor([False])))
    assert torch.allclose(s1.A, s2.A, rtol=1e-6, atol=1e-7)
    # and the closed form: d^2 A0 + (1-d) d |a1| + (1-d) |a2|
    w0 = torch.tensor([d**2, d, 1.0]) / (d**2 + d + 1)
    A0 = (w0[:, None] * a0[0].abs()).sum(0)
    expected = d * d * A0 + (1 - d) * d * a1[0, 0].abs() + (1 - d) * a2[0, 0].abs()
    assert torch.allclose(s1.A[0, 0], expected, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------- GRIFFIN
def test_griffin_statistic_by_hand():
    """Each token's row normalised to unit L2 norm, then the column L2 norm over tokens.
    Rows [3,4,0], [0,3,4], [0,0,5] normalise to [.6,.8,0], [0,.6,.8], [0,0,1]:
    column sums of squares [0.36, 0.64 + 0.36, 0.64 + 1] -> norms [0.6, 1.0, sqrt(1.64)]."""
    a = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 3.0, 4.0], [0.0, 0.0, 5.0], [7.0, 7.0, 7.0]]])
    w = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last token is not traced
    st = Statistics(1, 3, "griffin", "cpu")
    st.reset(1)
    st.update(0, a, w, None)
    assert st.A[0, 0].tolist() == pytest.approx([0.36, 1.0, 1.64], rel=1e-6)
    assert st.base()[0, 0].tolist() == pytest.approx([0.6, 1.0, math.sqrt(1.64)], rel=1e-6)
    # scale invariance per token: multiplying a token's activations by 1000 changes nothing
    st2 = Statistics(1, 3, "griffin", "cpu")
    st2.reset(1)
    st2.update(0, a * torch.tensor([1000.0, 1.0, 0.001, 1.0])[None, :, None], w, None)
    assert torch.allclose(st2.A, st.A, rtol=1e-5)


def test_griffin_zero_token_is_finite():
    v = token_values("griffin", torch.zeros(1, 2, 3))
    assert torch.isfinite(v).all() and v.abs().sum() == 0


def test_token_values_are_fp32_and_do_not_overflow_fp16():
    a = torch.full((1, 1, 2), 1000.0, dtype=torch.float16)  # a^2 = 1e6 > fp16 max 65504
    assert torch.isinf(a.square()).all()
    for kind, expected in (("l2", 1e6), ("ema", 1000.0), ("griffin", 0.5)):
        v = token_values(kind, a)
        assert v.dtype == torch.float32
        assert v.flatten().tolist() == pytest.approx([expected, expected])


def _forwards(d, a, sizes, fresh=True):
    """A's state after forwards of `sizes` tokens each (the first fresh): the reference the one-call weights equal."""
    s = Statistics(1, a.shape[-1], "ema", "cpu")
    s.reset(1)
    t = 0
    for i, k in enumerate(sizes):
        s.update(0, a[:, t : t + k], *ema_weights(torch.ones(1, k), d, torch.tensor([fresh and i == 0])))
        t += k
    return s.A[0, 0]


@pytest.mark.parametrize("fresh", [True, False])
def test_ema_weights_group_equals_a_prompt_then_single_token_forwards(fresh):
    """group=q: a q-token forward then one forward per token, in one call (chunked forcing: q = 1; one-pass
    scoring: q = the prompt's length); padding columns get no weight."""
    d = 0.7
    a = torch.randn(1, 6, 4, generator=torch.Generator().manual_seed(1))
    for q in (1, 3, 6):
        one = Statistics(1, 4, "ema", "cpu")
        one.reset(1)
        if not fresh:  # some earlier state the continuing row decays
            one.update(0, a[:, :2], *ema_weights(torch.ones(1, 2), d, torch.tensor([True])))
        ref = _forwards(d, torch.cat([a[:, :2], a], dim=1), [2, q] + [1] * (6 - q)) if not fresh else \
            _forwards(d, a, [q] + [1] * (6 - q))
        valid = torch.cat([torch.ones(1, 6), torch.zeros(1, 2)], dim=1)
        padded = torch.cat([a, torch.randn(1, 2, 4)], dim=1)
        one.update(0, padded, *ema_weights(valid, d, torch.tensor([fresh]), group=q if fresh else None))
        assert torch.allclose(one.A[0, 0], ref, rtol=1e-6, atol=1e-7), q


def test_ema_weights_head_then_tail_equals_one_prompt_forward():
    """A prompt's common head run un-normalised, then its tail with head=k: the same state as the whole prompt in one
    normalised forward (chunked forcing's shared few-shot head)."""
    d = 0.6
    a = torch.randn(1, 7, 4, generator=torch.Generator().manual_seed(2))
    k = 3
    s = Statistics(1, 4, "ema", "cpu")
    s.reset(1)
    s.update(0, a[:, :k], *ema_weights(torch.ones(1, k), d, torch.tensor([True]), normalise=False))
    s.update(0, a[:, k:], *ema_weights(torch.ones(1, 7 - k), d, torch.tensor([True]), head=k))
    assert torch.allclose(s.A[0, 0], _forwards(d, a, [7]), rtol=1e-6, atol=1e-7)
