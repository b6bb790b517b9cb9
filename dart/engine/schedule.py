"""The token-by-token decoding schedule of the controller (method.md section 2), as a mixin of `Controller`.

One forward at a time, as `model.generate` (or dart.engine.lean) makes them: forward 0 is the prefill, every
later forward one new token per row. Per row (local step s counted from the request's start or the last re-trace):
    s < m      trace (dense): statistics and the detector's baseline accumulate
    s == m     build the masks, prune from here on
    s > m      prune; every W pruned tokens the detector compares the window with its baseline; a trigger drops
               the row's mask and re-traces it for m forwards (s restarts at 0)
    step >= r  (release step, optional) run dense again
This is also the exact reference of dart.engine.forcing, which runs teacher-forced text in chunks.
"""
from __future__ import annotations

import torch

from dart.engine.plan import ROWS, Plan
from dart.engine.stats import ema_weights
from dart.errors import ConfigError


class DecodeSchedule:
    def _phases(self) -> tuple[list[bool], list[bool], list[bool], bool]:
        if self.fixed is not None:  # fixed masks: nothing is ever traced or built
            return [False] * self.B, [False] * self.B, [False] * self.B, False
        m, r = self.spec.masking_step, self.spec.release_step
        released = r is not None and self.step >= r
        local = [self.step - s for s in self.restart]
        tracing = [not released and (s < m or (m == 0 and s == 0)) for s in local]
        build_now = [not released and m >= 1 and s == m for s in local]
        inlayer = [not released and m == 0 and s == 0 for s in local]
        return tracing, build_now, inlayer, released

    def _decode_plan(self, T: int, valid: torch.Tensor | None) -> Plan:
        tracing, build_now, inlayer, released = self._phases()
        if any(build_now):
            self.builds += sum(build_now)
            self._build(self._rows(build_now))
            for b, flag in enumerate(build_now):
                if flag:
                    self.has_mask[b] = True
        if any(inlayer) and self.spec.global_build:
            raise ConfigError(
                "strategy.allocation=auto needs every layer's statistics before any mask, so it cannot mask the "
                "prefill it traces (masking_step=0) during generation; use masking_step >= 1"
            )
        masked = [self.has_mask[b] and not released and not tracing[b] for b in range(self.B)]
        self._maybe_compact()
        key = (T, tuple(tracing), tuple(masked), tuple(inlayer), released, self.compacted, valid is None)
        if key == self._cache_key and not any(tracing) and not any(inlayer):
            plan = self._cached_plan  # steady decoding: nothing changed, no new tensors
        else:
            plan = Plan()
            if any(tracing):
                w = self._rows(tracing).to(torch.float32)[:, None].expand(self.B, T)
                if valid is not None:
                    w = w * valid
                plan.trace_w = w.contiguous()
                if self.spec.statistic == "ema":
                    plan.trace_w, plan.decay = ema_weights(plan.trace_w, float(self.spec.ema_decay), self._rows(self.fresh))
                plan.align = self.stats.alignment
                if self.detector is not None:
                    plan.drift_trace_w = (w > 0).to(torch.float32)
            if any(inlayer):
                plan.build_rows = self._rows(inlayer)
                self.builds += sum(inlayer)
            if any(masked) or any(inlayer):
                plan.prune = ROWS
            if self.detector is not None and any(masked):
                plan.drift_decode_rows = self._rows(masked)
            if self.compacted and all(masked):  # one sequence's kept prefix, or a batch's union (dart.engine.union)
                from dart.engine.union import rows_differ

                plan.compact, plan.compact_rows = self.kept_prefix, rows_differ(self)
            self._cache_key, self._cached_plan = key, plan
        if plan.trace_w is not None:
            self.tokens_traced += (plan.trace_w > 0).sum()
            for b, flag in enumerate(tracing):
                if flag:
                    self.fresh[b] = False
        self.tokens_seen += float(self.B * T) if valid is None else valid.sum()
        return plan

    def _after_decode_forward(self) -> None:
        p = self.plan
        tracing, _, inlayer, _ = self._phases()
        for b, flag in enumerate(inlayer):
            if flag:
                self.has_mask[b] = True
        det = self.detector
        if det is not None and self._attn:
            v = torch.cat([self._attn[l] for l in self.monitored], dim=-1)
            if p.drift_trace_w is not None:
                det.collect_trace(v, p.drift_trace_w)
                self.peak_detector_bytes = max(self.peak_detector_bytes, det.nbytes())
            m = self.spec.masking_step
            ending = [tracing[b] and (self.step - self.restart[b] == max(m, 1) - 1) for b in range(self.B)]
            if any(ending):
                det.finalize(self._rows(ending))
            if p.drift_decode_rows is not None:
                det.collect_decode(v, p.drift_decode_rows)
                self.decode_signal_tokens += self.B
                due = []
                for b in range(self.B):
                    decoding = self.has_mask[b] and not tracing[b]
                    self.n_window[b] += int(decoding)
                    due.append(decoding and self.n_window[b] == det.W)
                if any(due):
                    self._check(self._rows(due), due)
            if not any(self._phases()[0]) and det.windows.shape[1]:
                det.drop_windows()
        self.step += 1

    def _check(self, rows: torch.Tensor, due: list[bool]) -> None:
        cos, fired = self.detector.check(rows, self.step)
        self.checks += sum(due)
        values = torch.stack([fired.float(), cos, self.detector.tau]).tolist()  # one read per window
        for b, flag in enumerate(due):
            if not flag:
                continue
            self.n_window[b] = 0
            entry = {"request": self.requests, "row": b, "step": self.step, "cosine": values[1][b], "threshold": values[2][b]}
            self.window_log.append(entry)
            if values[0][b] > 0.5:
                self.triggers.append(entry)
                self._retrace(b)

    def _retrace(self, b: int) -> None:
        """Drop row b's mask and statistics; it runs dense and re-traces from the next forward."""
        row = self._rows([i == b for i in range(self.B)])
        self.restart[b] = self.step + 1
        self.has_mask[b] = False
        self.fresh[b] = True
        self.M[:, b] = 1
        self.stats.clear_rows(row)
        self.detector.clear_rows(row)
        if self.B == 1:
            self.compacted = False
        self._cache_key = None
