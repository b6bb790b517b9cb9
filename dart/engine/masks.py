"""Masks from scores (docs/method.md section 4): top-k per layer and row, or the mean threshold (the published
"auto" prune strategy: keep s_j >= mean(s)). Scores are (L, B, I); masks are bool of the same shape. `build` makes a
controller's masks from its statistics: the rows' scores (dart.engine.scoring, blended with a calibration ranking
under prior_mix), the keep counts (uniform, a list, the depth-aware allocation, or the effective budget), the rule."""
from __future__ import annotations

import math
import time

import torch

from dart.engine.allocation import auto_prune_fractions, keep_from_prune
from dart.engine.placement import Layered
from dart.engine.scoring import scores


def topk_mask(scores: torch.Tensor, keep: torch.Tensor | list[int]) -> torch.Tensor:
    """Keep the k highest scores of each (layer, row). keep: a per-layer list of ints, or a (B, L) tensor."""
    L, B, I = scores.shape
    if not torch.is_tensor(keep) and len(set(keep)) == 1:  # one k everywhere: a single topk call
        idx = scores.topk(int(keep[0]), dim=-1, sorted=False).indices
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True)
    k = torch.as_tensor(keep, device=scores.device)
    k = k[:, None].expand(L, B) if k.dim() == 1 else k.transpose(0, 1)  # (L, B)
    order = scores.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.arange(I, device=scores.device).expand(L, B, I)
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order, ranks < k[..., None])


def mean_mask(scores: torch.Tensor) -> torch.Tensor:
    return scores >= scores.mean(dim=-1, keepdim=True)


def keep_counts(c, rows: torch.Tensor, layer: int | None):
    """Keep counts (a list (L,) shared by every row, or (B, L)) and, for an in-layer build that computed the
    depth-aware allocation, that allocation (the forward's other layers reuse it), else None."""
    if c.spec.budget == "effective":
        return c.tally.budget_keep(c.rows, rows.tolist()), None
    if c.fixed_keep is not None:
        return c.fixed_keep, None
    if layer is not None and c.alloc is not None:  # in-layer builds: one allocation per forward
        return c.alloc, None
    keep = keep_from_prune(auto_prune_fractions(c.stats.layer_alignment(), c.spec.sparsity, c.spec.auto), c.I)
    if c.spec.published_quirks:  # the published allocator: the first layer it builds takes the LAST layer's count
        keep = keep.clone()
        keep[:, 0 if layer is None else layer] = keep[:, -1]
    return keep, (keep if layer is not None else None)


def shared_mask(sc: torch.Tensor, keep, contrib: torch.Tensor, I: int, shared_keep: float | None) -> torch.Tensor:
    """strategy.batch_mask=shared: one kept set per layer (n, I) for the whole batch, the top-k of the contributing
    rows' scores, each row's normalised by its mean (no row dominates by scale), summed. k: shared_keep * I, else the
    contributing rows' mean keep count of the layer. keep: a per-layer list or (B, n); contrib (B,) bool."""
    w = contrib.to(sc.dtype)[None, :, None]
    total = (sc / sc.mean(dim=-1, keepdim=True).clamp_min(1e-30) * w).sum(dim=1)  # (n, I)
    if shared_keep is not None:
        k = [max(1, math.floor(float(shared_keep) * I + 1e-9))] * total.shape[0]
    elif isinstance(keep, list):
        k = list(keep)
    else:  # (B, n) per-row counts: their mean over the contributing rows
        k = ((keep.to(torch.float64) * contrib.to(torch.float64)[:, None]).sum(0) / contrib.sum().clamp_min(1)).round().long()
        k = k.tolist()
    return topk_mask(total[:, None, :], k)[:, 0]


@torch.no_grad()
def build_masks(c, rows: torch.Tensor, layer: int | None = None) -> None:
    """The masks of rows (B,) bool: of every layer (layer None, between forwards) or of one layer (inside a forward).
    Under batch_mask=shared (a batch of more than one row) every row holding masks, and every row built now, gets the
    batch's one shared set, rebuilt from all of them."""
    t0 = time.perf_counter()
    shared = c.spec.batch_mask == "shared" and c.B > 1
    new = rows  # the rows whose masks are built (the run's achieved sparsity counts their builds)
    if shared:  # the rows that hold masks take the new shared set too
        rows = rows | c.flags(r.has_mask for r in c.rows)
    if layer is None or shared:
        c.tally.fold(c.rows, [b for b, f in enumerate(rows.tolist()) if f])
    keep_all, alloc = (None, None) if c.spec.mask_rule == "mean" else keep_counts(c, rows, layer)
    for sl, dev in c.spans.within(layer):  # once per device group (one group on a single device)
        r = rows.to(dev)
        sc = scores(c.spec.ranking, c.stats.base(sl), None if c.weight is None else c.weight.view(sl))
        if c.global_scores is not None:  # GLASS-style blend with a calibration ranking (scales made comparable)
            lam = float(c.spec.prior_mix)
            g = c.global_scores.view(sl).gather(1, c.order.view(sl).long())  # the physical neuron order
            own = sc / sc.mean(dim=-1, keepdim=True).clamp_min(1e-30)
            sc = (1 - lam) * own + lam * (g / g.mean(dim=-1, keepdim=True).clamp_min(1e-30))[:, None, :]
        if keep_all is None:
            mask = mean_mask(sc)
        else:
            keep = keep_all[sl] if isinstance(keep_all, list) else keep_all[:, sl].to(dev)
            mask = topk_mask(sc, keep) if not shared else shared_mask(sc, keep, r, c.I, c.spec.shared_keep)[:, None, :].expand_as(sc)
        M = c.M.view(sl)
        M.copy_(torch.where(r[None, :, None], mask.to(c.dtype), M))
        c.kept_sum.view(sl).add_((mask.sum(dim=-1).to(torch.float64) * new.to(dev)[None, :]).sum(dim=1))
        c.tally.note_kept(r, sl, mask)
    c.masks_built(time.perf_counter() - t0, alloc)


def original_masks(c) -> torch.Tensor:
    """A controller's current masks in the ORIGINAL neuron order, (L, B, I) bool (compaction reorders them)."""
    parts = []
    for (sl, _, M), o in zip(c.M.groups(), c.order.parts):
        idx = o.long()[:, None, :].expand(M.shape)
        parts.append(torch.zeros(M.shape, dtype=torch.bool, device=M.device).scatter_(-1, idx, M > 0.5))
    return Layered(c.spans, parts).gather()


def row_masks(c, b: int) -> dict:
    """Row b's masks in the ORIGINAL neuron order and its kept counts (a parked row of chunked teacher forcing, which
    runs its trigger forward again with them; a compaction may move neurons meanwhile)."""
    return {"M": [torch.zeros_like(p[:, b]).scatter_(-1, o.long(), p[:, b]) for p, o in zip(c.M.parts, c.order.parts)],
            "kept": [p[:, b].clone() for p in c.tally.kept.parts]}


def put_row_masks(c, b: int, saved: dict) -> None:
    """Give row b the masks and kept counts `row_masks` saved (in the current physical order)."""
    for part, col, o in zip(c.M.parts, saved["M"], c.order.parts):
        part[:, b] = col.gather(-1, o.long())
    for part, col in zip(c.tally.kept.parts, saved["kept"]):
        part[:, b] = col
