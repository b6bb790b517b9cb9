"""What a run actually skipped (docs/method.md section 9), and the `effective` budget that spends it.

Effective sparsity: the token-weighted fraction of FFN neuron evaluations actually skipped. Every token a row runs is
counted once, as prefill (the prompt) or decode (teacher-forced or generated), dense (traced, re-tracing, released,
or a strategy without masks) or pruned under the row's current masks. Pruned tokens are kept as a per-row count
(Row.pend_*) and folded into per-layer totals, `count * (I - kept_l)`, whenever the row's masks change (a build, a
re-trace, a new request), so the per-token cost is one host addition.

Budget `effective` (strategy.budget): dense decode tokens are a debt, `sparsity * decode tokens - skipped`, and each
new mask prunes harder to repay it over the row's expected segment (the mean length of its earlier segments, else
strategy.budget_horizon tokens): s = clip(sparsity + debt / horizon, sparsity, budget_max).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from dart.engine.placement import Layered, Spans
from dart.engine.rows import Row

KINDS = ("prefill", "decode")


class Tally:
    def __init__(self, spans: Spans, I: int, device, neuron_bytes: int, spec):
        self.spans, self.L, self.I, self.device, self.spec = spans, spans.L, I, device, spec
        z = lambda: Layered.build(spans, lambda n, d: torch.zeros(n, dtype=torch.float64, device=d))  # noqa: E731
        self.tokens = {k: 0 for k in KINDS}
        self.dense = {k: 0 for k in KINDS}
        self.skipped = {k: z() for k in KINDS}  # per layer, on its device
        self.neuron_bytes = neuron_bytes  # FFN weight bytes of one neuron (gate/up rows + down column)
        self.gen_ffn_bytes = 0
        self.gen_tokens = 0
        self.kept = Layered.build(spans, lambda n, d: torch.zeros(n, 0, dtype=torch.long, device=d))  # (L, B)

    # ------------------------------------------------------------------ rows
    def reset(self, rows: Sequence[Row], fixed: Layered | None) -> None:
        """Kept counts of a new batch: the fixed masks' (every row), else every neuron (no mask yet)."""
        B = len(rows)
        if fixed is not None:
            self.kept = fixed.map(lambda p: p.sum(dim=-1)[:, None].repeat(1, B))
            frac = 1.0 - float(torch.stack([p.sum(dim=-1).float().mean() for p in fixed.parts]).mean()) / self.I
            for r in rows:
                r.frac = frac
        else:
            self.kept = Layered.build(self.spans, lambda n, d: torch.full((n, B), self.I, dtype=torch.long, device=d))

    def select(self, index: torch.Tensor) -> None:
        self.kept = self.kept.map(lambda p: p.index_select(1, index.to(p.device)))

    def set_dense(self, b: int, layers: slice | None = None) -> None:
        """Row b's masks of `layers` (all: None) are dropped: it keeps every neuron there."""
        for sl, _ in self.spans.within(layers):
            self.kept.view(sl)[:, b] = self.I

    def note_kept(self, rows: torch.Tensor, sl: slice, mask: torch.Tensor) -> None:
        """A build of layers `sl` (inside one device group) for rows (B,) bool on that group's device."""
        kept = self.kept.view(sl)
        kept.copy_(torch.where(rows[None, :], mask.sum(dim=-1), kept))

    # ------------------------------------------------------------------ counting
    def count(self, row: Row, kind: str, n: int, pruned: bool) -> None:
        """A row ran n tokens of `kind`, pruned under its current masks or dense."""
        if n <= 0:
            return
        self.tokens[kind] += n
        if pruned:
            row.pending[kind] += n
        else:
            self.dense[kind] += n
        if kind == "decode":
            row.debt_tokens += n
            if pruned:
                row.debt_skip += n * row.frac

    def fold(self, rows: Sequence[Row], which: Sequence[int] | None = None) -> None:
        """Turn the rows' pruned-token counts into skipped neuron evaluations under their current masks."""
        for b in range(len(rows)) if which is None else which:
            row = rows[b]
            for kind, n in row.pending.items():
                if n:
                    for (_, _, skipped), kept in zip(self.skipped[kind].groups(), self.kept.parts):
                        skipped += n * (self.I - kept[:, b]).to(torch.float64)
                    row.pending[kind] = 0

    def generated(self, kept_neurons: int, rows: int, steps: int = 1) -> None:
        """`steps` decode steps of `rows` rows, each reading `kept_neurons` neurons' FFN weights (summed over layers)
        once."""
        self.gen_ffn_bytes += kept_neurons * self.neuron_bytes * steps
        self.gen_tokens += rows * steps

    # ------------------------------------------------------------------ budget
    def budget_keep(self, rows: Sequence[Row], building: Sequence[bool]) -> torch.Tensor:
        """Per-row keep counts (B, L) of the effective budget (the same for every layer of a row); the rows being
        built take this count as their current skipped fraction."""
        s, hi = float(self.spec.sparsity), float(self.spec.budget_max)
        keep = []
        for row, flag in zip(rows, building):
            debt = s * row.debt_tokens - row.debt_skip
            segs = row.seg_lengths
            horizon = sum(segs) / len(segs) if segs else float(self.spec.budget_horizon)
            target = min(max(s + debt / max(horizon, 1.0), s), hi)
            k = max(1, math.floor((1.0 - target) * self.I + 1e-9))
            if flag:
                row.frac = 1.0 - k / self.I
            keep.append(k)
        return torch.tensor(keep, dtype=torch.long, device=self.device)[:, None].expand(len(rows), self.L)

    # ------------------------------------------------------------------ report
    def effective(self, rows: Sequence[Row]) -> dict:
        """Effective sparsity of the run so far: decode (teacher-forced or generated tokens), prefill, all, per layer
        (decode), token counts, and the FFN weight bytes one generated token read."""
        self.fold(rows)
        skipped = {k: self.skipped[k].tolist() for k in KINDS}  # one read per device
        out: dict = {}
        LI = self.L * self.I
        for k in KINDS:
            n = self.tokens[k]
            out[k] = sum(skipped[k]) / (LI * n) if n else None
        n_all = sum(self.tokens.values())
        out["all"] = sum(sum(skipped[k]) for k in KINDS) / (LI * n_all) if n_all else None
        n = self.tokens["decode"]
        out["per_layer"] = [v / (self.I * n) for v in skipped["decode"]] if n else None
        out["tokens"] = dict(self.tokens)
        out["dense_tokens"] = dict(self.dense)
        out["ffn_bytes_per_generated_token"] = (self.gen_ffn_bytes / self.gen_tokens) if self.gen_tokens else None
        out["ffn_bytes_dense"] = self.L * self.I * self.neuron_bytes
        return out
