"""Masks from scores (docs/method.md section 4): top-k with one k, a per-layer list, a per-(row, layer) tensor, and the
mean threshold, on hand-built scores with known answers."""
from __future__ import annotations

import torch

from dart.engine.allocation import list_keep, uniform_keep
from dart.engine.masks import mean_mask, topk_mask

# scores (L=2, B=2, I=5), no ties inside a (layer, row)
S = torch.tensor(
    [
        [[5.0, 1.0, 4.0, 2.0, 3.0], [0.1, 0.5, 0.4, 0.2, 0.3]],
        [[-1.0, -5.0, -2.0, -3.0, -4.0], [10.0, 30.0, 20.0, 50.0, 40.0]],
    ]
)
T, F = True, False


def test_topk_uniform():
    m = topk_mask(S, [2, 2])
    assert m.dtype == torch.bool and m.shape == S.shape
    assert m.tolist() == [
        [[T, F, T, F, F], [F, T, T, F, F]],
        [[T, F, T, F, F], [F, F, F, T, T]],
    ]
    assert topk_mask(S, [5, 5]).all()


def test_topk_per_layer_list():
    m = topk_mask(S, [1, 3])
    assert m.tolist() == [
        [[T, F, F, F, F], [F, T, F, F, F]],
        [[T, F, T, T, F], [F, T, F, T, T]],
    ]


def test_topk_per_row_and_layer_tensor():
    keep = torch.tensor([[1, 4], [3, 2]])  # (B, L): row 0 keeps 1 in layer 0 and 4 in layer 1, ...
    m = topk_mask(S, keep)
    assert m.tolist() == [
        [[T, F, F, F, F], [F, T, T, F, T]],
        [[T, F, T, T, T], [F, F, F, T, T]],
    ]
    assert m.sum(-1).tolist() == [[1, 3], [4, 2]]


def test_mean_threshold():
    s = torch.tensor([[[1.0, 3.0, 5.0, 7.0]], [[4.0, 4.0, 1.0, 7.0]], [[2.0, 2.0, 2.0, 2.0]]])  # means 4, 4, 2
    assert mean_mask(s).tolist() == [[[F, F, T, T]], [[T, T, F, T]], [[T, T, T, T]]]
    # a variable count per layer and row
    s = torch.tensor([[[1.0, 2.0, 3.0, 4.0, 10.0], [0.0, 0.0, 0.0, 0.0, 5.0]],
                      [[6.0, 6.0, 6.0, 6.0, 1.0], [-1.0, -2.0, -3.0, -4.0, -5.0]]])  # means 4, 1, 5, -3
    assert mean_mask(s).tolist() == [
        [[F, F, F, T, T], [F, F, F, F, T]],
        [[T, T, T, T, F], [T, T, T, F, F]],
    ]


def test_keep_counts():
    # k = floor(v * I) with v = 1 - sparsity (and at least one)
    assert uniform_keep(3, 64, 0.5) == [32, 32, 32]
    assert uniform_keep(2, 10, 0.75) == [2, 2]  # floor(2.5)
    assert uniform_keep(2, 10, 0.7) == [3, 3]  # floor(3.0000000000000004) and 0.3*10 rounding guarded
    assert uniform_keep(1, 10, 0.99) == [1]
    assert list_keep([0.25, 0.5, 1.0, 0.01], 12) == [3, 6, 12, 1]
    assert list_keep([0.3], 10) == [3]  # 0.3 * 10 = 2.9999999999999996 in floats: still 3
