"""Compaction: the physical neuron order in which a single sequence (its kept prefix) or a whole batch (the union of
its rows' kept sets) runs compacted.

A single sequence runs compacted because its kept neurons are moved, in place, to a contiguous prefix of every
layer (dart.engine.ffn.permute_neurons). Rows of a batch hold different masks, but one physical order per layer
can still put the UNION of the rows' kept sets first: the batch then runs only that prefix of k_l neurons, each
row masked with its own mask inside it,

    down((act(gate[:k] x) * up[:k] x) * M[l][:, :k], [:k])

Neurons outside the union are zero in every row, so this equals masked execution (a * M over all I neurons) up
to float summation order, and a memory-bound decode step reads k_l / I of the FFN weights.

When (decided here, once per change of the masks, never per token):
- every row of the forward holds a mask. A row that re-traces runs dense, and a dense row needs every neuron, so
  a forward with any dense row runs masked (in whatever physical order the weights are in: masks are stored in
  that order, so masked execution is exact in any order);
- the union's keep fraction, mean over layers, is at most `strategy.union_max_keep` (default 0.9), unless
  `strategy.execution=compact` (always). A nearly dense union saves few bytes and costs a re-permutation of the
  weights at every mask change: masked execution instead.
The union is recomputed only when some row's mask changes: a build (the engine's build counter moves), a row
that re-traced holding a mask again, or a new request; if the new union already is the prefix (the same masks
again), nothing moves.
Rows whose masks are all identical (a fixed mask, a shared prompt) skip the per-row multiply: the prefix is
their mask.

Not offered: a `grouped` execution (rows with identical masks share one compaction, several groups per batch).
With one physical order per layer only one set can be a prefix, so each further group would need its own copy
of its kept weights (memory the in-place design avoids), and a memory-bound step that reads each group's kept
weights reads sum_g |K_g| >= |union_g K_g| neurons: never fewer bytes than the union. The one case where
grouping helps, every row alike, is the union without the per-row multiply.
"""
from __future__ import annotations

import dataclasses
import time

import torch



@dataclasses.dataclass
class UnionState:
    key: tuple  # (request, builds, B): the masks the current order was planned for
    rows: bool  # rows differ: mask each row inside the prefix
    keep: float  # the union's keep fraction, mean over layers
    compacted: bool  # the union is the prefix (False: above the threshold, the batch runs masked)


def is_prefix(keep: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Device bool: every layer's kept set is exactly its first counts[l] neurons."""
    I = keep.shape[-1]
    return (keep == (torch.arange(I, device=keep.device)[None, :] < counts[:, None])).all()


def swaps(keep: torch.Tensor, counts: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the fewest moves that make keep[l] the first counts[l] positions: (dst, src) positions such that
    new[dst] = old[src]. Every kept neuron outside the prefix swaps with a dropped one inside it; nothing else
    moves, so a re-mask that changes few neurons of the union copies few weight rows."""
    I = keep.shape[-1]
    pos = torch.arange(I, device=keep.device)
    out = []
    for l, k in enumerate(counts):
        inside = pos < k
        holes = (inside & ~keep[l]).nonzero().flatten()  # dropped neurons inside the new prefix
        comers = (~inside & keep[l]).nonzero().flatten()  # kept neurons outside it (as many)
        out.append((torch.cat([holes, comers]), torch.cat([comers, holes])))
    return out


class Union:
    """The union compaction of a batch, owned by the controller (its public state: rows, masks, weights)."""

    def __init__(self, c):
        self.c = c
        self.state: UnionState | None = None

    def clear(self) -> None:
        self.state = None

    def rows_differ(self) -> bool:
        """Whether a compacted forward must mask each row inside the prefix (a batch's union of different masks)."""
        st = self.state
        return bool(st is not None and st.compacted and st.rows)

    def keep(self) -> float | None:
        """The current batch union's keep fraction (mean over layers), None before any union was planned."""
        return None if self.state is None else self.state.keep

    @torch.no_grad()
    def move(self, moves: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Apply per-layer swaps (dst, src), in place, to everything neuron-major the controller holds: the FFN
        weights, the neuron order, the priors, the masks of every row and the statistics."""
        for l, (dst, src) in enumerate(moves):
            if dst.numel():
                self.c.swap(l, dst, src)

    @torch.no_grad()
    def single(self) -> None:
        """One sequence: its kept neurons moved to a contiguous prefix of every layer, in place (once per build)."""
        c = self.c
        if not c.pending_compact or not c.rows[0].has_mask:
            return
        self.clear()
        t0 = time.perf_counter()
        counts = []
        for sl, _, M in c.M.groups():  # per device group: its layers' kept neurons first, each part in order
            keep = M[:, 0] > 0.5  # (n, I)
            order = (~keep).to(torch.int8).argsort(dim=-1, stable=True)
            for i, l in enumerate(range(sl.start, sl.stop)):
                c.reorder(l, order[i])
            counts.append(keep.sum(dim=-1))
        c.compaction([int(k) for n in counts for k in n.tolist()], time.perf_counter() - t0)

    @torch.no_grad()
    def update(self) -> None:
        """A batch (B > 1) whose rows all hold masks: put the union of their kept sets first (if it is worth it).
        Called by the controller's maybe_compact before each decode forward's plan; cheap when nothing changed."""
        c = self.c
        spec = c.spec
        if c.B == 1 or spec.execution == "masked" or c.fixed is not None or not all(c.has_mask):
            return
        key = (c.counts.requests, c.counts.builds, c.B)
        if self.state is not None and self.state.key == key:
            return
        t0 = time.perf_counter()
        keeps, n, same, in_place = [], [], True, True
        for _, _, M in c.M.groups():  # one read per device group
            on = M > 0.5  # (n, B, I), physical order
            keep = on.any(dim=1)  # (n, I)
            counts = keep.sum(dim=-1)
            flags = torch.stack([(on == on[:, :1]).all(), is_prefix(keep, counts)]).to(torch.float64)
            got = torch.cat([counts.to(torch.float64), flags]).tolist()
            keeps.append(keep)
            n += [int(v) for v in got[:-2]]
            same, in_place = same and bool(got[-2]), in_place and bool(got[-1])
        frac = sum(n) / (len(n) * c.I)
        use = spec.execution == "compact" or frac <= float(spec.union_max_keep)
        if use and not in_place:
            moves = []
            for (sl, _, _), keep in zip(c.M.groups(), keeps):
                moves += swaps(keep, n[sl])
            self.move(moves)
        self.state = UnionState(key=key, rows=not same, keep=frac, compacted=use)
        c.compaction(n if use else None, time.perf_counter() - t0)
