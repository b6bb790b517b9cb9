"""Depth-aware layer allocation (docs/method.md section 4, the authors' `all:auto`) with the published constants
we = 0.3, wl = 0.15, a = 0.25, b = 0.35, bounds [0.10, 0.90], 10 correction rounds."""
from __future__ import annotations

import pytest
import torch

from dart.engine.allocation import auto_prune_fractions, depth_prior, keep_from_prune
from dart.compose import auto_spec, drift_spec, engine_spec

SPEC = auto_spec()


def test_published_constants():
    assert (SPEC.early_width, SPEC.late_width, SPEC.early_floor, SPEC.late_floor) == (0.3, 0.15, 0.25, 0.35)
    assert (SPEC.min_prune, SPEC.max_prune, SPEC.iterations, SPEC.reference) == (0.1, 0.9, 10, "online")


def test_depth_prior_l32_by_hand():
    D = depth_prior(32, SPEC)
    assert D.shape == (32,)
    # z = l / 31; early ramp while z < 0.3 (l <= 9): D = 0.25 + 0.75 * z / 0.3
    assert D[0].item() == pytest.approx(0.25)
    assert D[3].item() == pytest.approx(0.25 + 0.75 * (3 / 31) / 0.3)  # 0.491935...
    assert D[3].item() == pytest.approx(0.4919355, abs=1e-6)
    assert D[9].item() == pytest.approx(0.25 + 0.75 * (9 / 31) / 0.3)  # 0.975806...
    assert D[9].item() == pytest.approx(0.9758065, abs=1e-6)
    # middle: z in [0.3, 0.85] -> 1 (l = 10 .. 26)
    assert D[10:27].tolist() == [1.0] * 17
    # late ramp while z > 0.85 (l >= 27): D = 0.35 + 0.65 * (1 - z) / 0.15
    assert D[27].item() == pytest.approx(0.35 + 0.65 * (4 / 31) / 0.15)  # 0.909140...
    assert D[27].item() == pytest.approx(0.9091398, abs=1e-6)
    assert D[30].item() == pytest.approx(0.35 + 0.65 * (1 / 31) / 0.15)
    assert D[31].item() == pytest.approx(0.35)
    # monotone ramps
    assert all(D[l] < D[l + 1] for l in range(9))
    assert all(D[l] > D[l + 1] for l in range(26, 31))


def test_depth_prior_l4():
    # z = 0, 1/3, 2/3, 1: early layer 0 -> a = 0.25, middle -> 1, last layer -> b = 0.35
    assert depth_prior(4, SPEC).tolist() == pytest.approx([0.25, 1.0, 1.0, 0.35])


def _reference(S, rho, spec=SPEC, eps=1e-6):
    """The docs/method.md recipe, step by step, in plain Python floats."""
    L = len(S)
    lo, hi = spec.min_prune, spec.max_prune
    smin, smax = min(S), max(S)
    R = [1 - (s - smin) / (smax - smin + 1e-6) for s in S]
    D = depth_prior(L, spec).tolist()
    P = [r * d for r, d in zip(R, D)]
    B = rho * L
    p = [min(hi, max(lo, B * x / sum(P))) for x in P]
    for _ in range(spec.iterations):
        delta = B - sum(p)
        if abs(delta) < 1e-6:
            break
        adj = [(x < hi - eps) if delta > 0 else (x > lo + eps) for x in p]
        wsum = sum(x for x, a in zip(P, adj) if a)
        n = sum(adj)
        p = [min(hi, max(lo, x + (delta * (w / wsum if wsum > eps else 1 / n) if a else 0.0)))
             for x, w, a in zip(p, P, adj)]
    return p


def test_hand_worked_l4():
    """S = [0, 1, 2, 3], rho = 0.5 (budget 2), D = [0.25, 1, 1, 0.35].
    R = 1 - S / (3 + 1e-6) = [1, 2/3, 1/3, ~3.3e-7];  P = R * D = [0.25, 2/3, 1/3, ~1.2e-7];  sum P = 1.25
    p = clip(2 P / 1.25) = clip([0.4, 1.0667, 0.5333, ~1.9e-7]) = [0.4, 0.9, 0.5333, 0.1];  sum = 1.9333
    delta = 1/15 > 0; adjustable = layers 0, 2, 3 (p < 0.9); P_adj sum = 0.25 + 1/3 (+ ~0) = 7/12
    p0 = 0.4 + (1/15)(0.25 / (7/12)) = 0.4 + 1/35 = 3/7;  p2 = 8/15 + (1/15)(4/7) = 4/7;  p3 = 0.1 (+ ~1e-8)
    sum = 3/7 + 0.9 + 4/7 + 0.1 = 2: done."""
    p = auto_prune_fractions(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), 0.5, SPEC)
    assert p.shape == (1, 4) and p.dtype == torch.float32
    assert p[0].tolist() == pytest.approx([3 / 7, 0.9, 4 / 7, 0.1], abs=1e-6)
    assert p[0].tolist() == pytest.approx(_reference([0.0, 1.0, 2.0, 3.0], 0.5), abs=1e-7)
    assert p[0].mean().item() == pytest.approx(0.5, abs=1e-6)
    # keep k = round((1 - p) * 64) = round([36.571, 6.4, 27.429, 57.6]) = [37, 6, 27, 58]
    assert keep_from_prune(p, 64)[0].tolist() == [37, 6, 27, 58]


def test_flat_scores_l32():
    """Flat S: R = 1 everywhere, so P = D; early and late layers are pruned less than the middle."""
    p = auto_prune_fractions(torch.full((1, 32), 0.7), 0.7, SPEC)[0].double()
    assert p.mean().item() == pytest.approx(0.7, abs=1e-6)
    assert p.min().item() >= 0.1 - 1e-7 and p.max().item() <= 0.9 + 1e-7
    # no bound is hit here (0.25 * 22.4 / sum D > 0.1, 22.4 / sum D < 0.9): p = B * D / sum D in one step
    D = depth_prior(32, SPEC)
    assert p.tolist() == pytest.approx((0.7 * 32 * D / D.sum()).tolist(), abs=1e-6)
    assert p[10:27].tolist() == pytest.approx([0.7 * 32 / D.sum().item()] * 17, abs=1e-6)  # = 0.8525...
    assert p[0] < p[5] < p[9] < p[12]
    assert p[31] < p[29] < p[27] < p[20]
    assert p[0].item() < 0.5 and p[31].item() < 0.5
    assert p.tolist() == pytest.approx(_reference([0.7] * 32, 0.7), abs=1e-6)


@pytest.mark.parametrize("rho", [0.1, 0.3, 0.5, 0.7, 0.85])
def test_budget_met_on_random_scores(rho):
    g = torch.Generator().manual_seed(int(rho * 100))
    S = torch.rand(6, 32, generator=g, dtype=torch.float64) * 3
    p = auto_prune_fractions(S, rho, SPEC).double()
    assert p.shape == (6, 32)
    assert p.mean(dim=1).tolist() == pytest.approx([rho] * 6, abs=1e-6)
    assert p.min().item() >= 0.1 - 1e-7 and p.max().item() <= 0.9 + 1e-7
    for b in range(6):  # each row is its own allocation
        assert p[b].tolist() == pytest.approx(_reference(S[b].tolist(), rho), abs=1e-6)


def test_higher_score_is_pruned_less_in_the_middle():
    """S^ = 1 for the layer with the largest S: it gets R = ~0 and the lower bound (protected)."""
    S = torch.ones(1, 16)
    S[0, 8] = 5.0
    p = auto_prune_fractions(S, 0.5, SPEC)[0]
    assert p[8].item() == pytest.approx(0.1, abs=1e-6)
    assert p[7].item() > 0.5


def test_infeasible_target_stays_in_bounds():
    S = torch.rand(1, 8, generator=torch.Generator().manual_seed(3))
    hi = auto_prune_fractions(S, 0.95, SPEC)[0]
    assert torch.allclose(hi, torch.full_like(hi, 0.9), atol=1e-6)
    low = auto_prune_fractions(S, 0.05, SPEC)[0]
    assert torch.allclose(low, torch.full_like(low, 0.1), atol=1e-6)


def test_keep_from_prune_rounding():
    p = torch.tensor([[0.5, 0.3, 0.71, 0.99, 0.0, 0.625]])
    # (1 - p) * 10 = 5, 7, 2.9, 0.1 (-> at least 1), 10, 3.75
    assert keep_from_prune(p, 10).tolist() == [[5, 7, 3, 1, 10, 4]]
    assert keep_from_prune(p, 10).dtype == torch.long
    # halves round to even, like Python's round(): 2.5 -> 2, 3.5 -> 4
    assert keep_from_prune(torch.tensor([[0.375, 0.125]]), 4).tolist() == [[round(2.5), round(3.5)]] == [[2, 4]]
