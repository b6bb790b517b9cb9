"""Per-row host state of the controller and what a run actually skipped, as a mixin of `Controller`.

Per row (sequence) of the current batch, host-side lists (no device reads on the hot path): where its segment
started, how many forwards the segment traces before its masks (masking_step for a request's first segment,
strategy.retrace_tokens after a trigger), whether it holds a mask, the detector baseline's progress, the last
trigger, and what the budget needs. `select_rows` reindexes all of them together with the device state.

Effective sparsity (method.md section 9): the token-weighted fraction of FFN neuron evaluations actually skipped.
Every token a row runs is counted once, as prefill (the prompt) or decode (teacher-forced or generated), dense
(traced, re-tracing, released, or a strategy without masks) or pruned under the row's current masks. Pruned tokens
are kept as a per-row count and folded into per-layer totals, `count * (I - kept_l)`, whenever the row's masks
change (a build, a re-trace, a new request), so the per-token cost is one host addition.

Budget `effective` (strategy.budget): dense decode tokens are a debt, `sparsity * decode tokens - skipped`, and
each new mask prunes harder to repay it over the row's expected segment (the mean length of its earlier segments,
else strategy.budget_horizon tokens): s = clip(sparsity + debt / horizon, sparsity, budget_max).
"""
from __future__ import annotations

import copy
import math

import torch

from dart.engine.placement import Layered

KINDS = ("prefill", "decode")


class RowBook:
    ROW_FIELDS = ("restart", "has_mask", "fresh", "n_window", "seg_m", "det_done", "det_count", "last_trigger",
                  "seg_lengths", "debt_tokens", "debt_skip", "row_frac", "pend_prefill", "pend_decode")

    def _init_accounting(self) -> None:
        self.eff_tokens = {k: 0 for k in KINDS}
        self.eff_dense = {k: 0 for k in KINDS}
        self.eff_skipped = {k: self._layered_zeros(dtype=torch.float64) for k in KINDS}  # per layer, its device
        w = self.ffns[0].w
        self.neuron_bytes = sum(t.shape[1] * t.element_size() for t in w.neuron_major if t.dim() == 2)
        self.gen_ffn_bytes = 0
        self.gen_tokens = 0
        self.kept_rows = self._layered_zeros(0, dtype=torch.long)

    def _fresh_row_lists(self, batch: int) -> None:
        if hasattr(self, "pend_decode"):
            self._fold(range(self.B))
        m = int(self.spec.masking_step)
        self.restart = [0] * batch
        self.has_mask = [self.fixed is not None] * batch
        self.fresh = [True] * batch
        self.n_window = [0] * batch
        self.seg_m = [m] * batch
        self.det_done = [False] * batch
        self.det_count = [0] * batch
        self.last_trigger = [None] * batch
        self.seg_lengths = [[] for _ in range(batch)]
        self.debt_tokens = [0] * batch
        self.debt_skip = [0.0] * batch
        self.row_frac = [0.0] * batch
        self.pend_prefill = [0] * batch
        self.pend_decode = [0] * batch
        if self.fixed is not None:
            self.kept_rows = self.fixed.map(lambda p: p.sum(dim=-1)[:, None].repeat(1, batch))
            self.row_frac = [1.0 - float(self._fixed_kept_mean) / self.I] * batch
        else:
            self.kept_rows = Layered.build(self.spans, lambda n, d: torch.full((n, batch), self.I, dtype=torch.long, device=d))

    def _select_row_lists(self, host: list[int], index: torch.Tensor) -> None:
        self._fold(range(len(self.pend_decode)))
        for name in self.ROW_FIELDS:
            old = getattr(self, name)
            setattr(self, name, [copy.copy(old[i]) for i in host])
        self.kept_rows = self.kept_rows.map(lambda p: p.index_select(1, index.to(p.device)))

    def row_states(self) -> list[dict]:
        """The host state of every row (forcing parks rows with it)."""
        self._fold(range(self.B))
        return [{name: copy.copy(getattr(self, name)[b]) for name in self.ROW_FIELDS} for b in range(self.B)]

    def set_row_states(self, states: list[dict]) -> None:
        for name in self.ROW_FIELDS:
            setattr(self, name, [copy.copy(s[name]) for s in states])

    # ------------------------------------------------------------------ counting
    def _count(self, b: int, kind: str, n: int, pruned: bool) -> None:
        """Row b ran n tokens of `kind`, pruned under its current masks or dense."""
        if n <= 0:
            return
        self.eff_tokens[kind] += n
        if pruned:
            if kind == "decode":
                self.pend_decode[b] += n
            else:
                self.pend_prefill[b] += n
        else:
            self.eff_dense[kind] += n
        if kind == "decode":
            self.debt_tokens[b] += n
            if pruned:
                self.debt_skip[b] += n * self.row_frac[b]

    def _fold(self, rows) -> None:
        """Turn the rows' pruned-token counts into skipped neuron evaluations under their current masks."""
        for b in rows:
            for kind, pend in (("prefill", self.pend_prefill), ("decode", self.pend_decode)):
                if pend[b]:
                    for (_, _, skipped), kept in zip(self.eff_skipped[kind].groups(), self.kept_rows.parts):
                        skipped += pend[b] * (self.I - kept[:, b]).to(torch.float64)
                    pend[b] = 0

    def _note_kept(self, rows: torch.Tensor, sl: slice, mask: torch.Tensor) -> None:
        """A build of layers `sl` (inside one device group) for rows (B,) bool on that group's device: their kept
        counts."""
        kept = self.kept_rows.view(sl)
        kept.copy_(torch.where(rows[None, :], mask.sum(dim=-1), kept))

    # ------------------------------------------------------------------ budget
    def _budget_keep(self, rows: list[bool]) -> torch.Tensor:
        """Per-row keep counts (B, L) of the effective budget (the same for every layer of a row); the rows being
        built (rows[b]) take this count as their current skipped fraction."""
        s, hi = float(self.spec.sparsity), float(self.spec.budget_max)
        keep = []
        for b in range(self.B):
            debt = s * self.debt_tokens[b] - self.debt_skip[b]
            segs = self.seg_lengths[b]
            horizon = sum(segs) / len(segs) if segs else float(self.spec.budget_horizon)
            target = min(max(s + debt / max(horizon, 1.0), s), hi)
            k = max(1, math.floor((1.0 - target) * self.I + 1e-9))
            if rows[b]:
                self.row_frac[b] = 1.0 - k / self.I
            keep.append(k)
        return torch.tensor(keep, dtype=torch.long, device=self.device)[:, None].expand(self.B, self.L)

    # ------------------------------------------------------------------ report
    def effective(self) -> dict:
        """Effective sparsity of the run so far: decode (teacher-forced or generated tokens), prefill, all, per
        layer (decode), token counts, and the FFN weight bytes one generated token read."""
        self._fold(range(self.B))
        skipped = {k: self.eff_skipped[k].tolist() for k in KINDS}  # one read per device
        out: dict = {}
        LI = self.L * self.I
        for k in KINDS:
            n = self.eff_tokens[k]
            out[k] = sum(skipped[k]) / (LI * n) if n else None
        n_all = sum(self.eff_tokens.values())
        out["all"] = sum(sum(skipped[k]) for k in KINDS) / (LI * n_all) if n_all else None
        n = self.eff_tokens["decode"]
        out["per_layer"] = [v / (self.I * n) for v in skipped["decode"]] if n else None
        out["tokens"] = {k: self.eff_tokens[k] for k in KINDS}
        out["dense_tokens"] = {k: self.eff_dense[k] for k in KINDS}
        out["ffn_bytes_per_generated_token"] = (self.gen_ffn_bytes / self.gen_tokens) if self.gen_tokens else None
        out["ffn_bytes_dense"] = self.L * self.I * self.neuron_bytes
        return out
