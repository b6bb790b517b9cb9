"""The token-by-token decoding schedule of the controller (method.md section 2), as a mixin of `Controller`.

One forward at a time, as `model.generate` (or dart.engine.lean) makes them: forward 0 is the prefill, every
later forward one new token per row. Per row (local step s counted from the request's start or the last re-trace;
n = masking_step m for the request's first segment, strategy.retrace_tokens after a trigger):
    s < n      trace (dense): statistics accumulate
    s == n     build the masks, prune from here on (n = 0: build and prune inside the forward that traces)
    detector   its baseline collects the monitored vectors from s = 0 through s = n (drift.phase=published: the
               forward that builds the masks included, as published) or n - 1 (before_mask), and on until it holds
               drift.min_windows windows of W vectors; after it, every W pruned tokens close a window that is
               compared with the baseline (not within drift.cooldown forwards of the last trigger); a trigger drops
               the row's mask and re-traces it (s restarts at 0)
    step >= r  (release step, optional) run dense again
This is also the exact reference of dart.engine.forcing, which runs teacher-forced text in chunks.
"""
from __future__ import annotations

import torch

from dart.engine.plan import ROWS, Plan
from dart.engine.stats import ema_weights
from dart.errors import ConfigError


class DecodeSchedule:
    def _phases(self) -> tuple[list[bool], list[bool], list[bool], list[bool], bool]:
        """Per row: tracing (statistics), building now, building inside this forward, the detector's baseline
        collecting; and whether the run is released."""
        B = self.B
        if self.fixed is not None:  # fixed masks: nothing is ever traced or built
            return [False] * B, [False] * B, [False] * B, [False] * B, False
        r = self.spec.release_step
        released = r is not None and self.step >= r
        tracing, build_now, inlayer = [], [], []
        for b in range(B):
            s, n = self.step - self.restart[b], self.seg_m[b]
            tracing.append(not released and (s < n or (n == 0 and s == 0)))
            build_now.append(not released and n >= 1 and s == n)
            inlayer.append(not released and n == 0 and s == 0)
        baseline = [self.detector is not None and not released and not self.det_done[b] for b in range(B)]
        return tracing, build_now, inlayer, baseline, released

    def _decode_plan(self, T: int, valid: torch.Tensor | None) -> Plan:
        tracing, build_now, inlayer, baseline, released = self._phases()
        if self.step == 0:  # the prefill: each row's token count, read once per request
            self._row_tokens = valid.sum(dim=1).long().tolist() if valid is not None else [T] * self.B
        else:
            self._row_tokens = [T] * self.B
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
        windows = [masked[b] and self.det_done[b] for b in range(self.B)]
        self._maybe_compact()
        key = (T, tuple(tracing), tuple(masked), tuple(inlayer), tuple(baseline), tuple(windows), released,
               self.compacted, valid is None)
        if key == self._cache_key and not any(tracing) and not any(inlayer) and not any(baseline):
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
            if any(baseline):
                w = self._rows(baseline).to(torch.float32)[:, None].expand(self.B, T)
                plan.drift_trace_w = (w * valid if valid is not None else w).contiguous()
            if any(inlayer):
                plan.build_rows = self._rows(inlayer)
                self.builds += sum(inlayer)
            if any(masked) or any(inlayer):
                plan.prune = ROWS
            if any(windows):
                plan.drift_decode_rows = self._rows(windows)
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
        self._pruned_now = [masked[b] or inlayer[b] for b in range(self.B)]
        self._window_rows = windows
        if T == 1:  # FFN weight bytes one generated token reads (a compacted prefix reads only its neurons)
            kept = sum(plan.compact) if plan.compact is not None else self.L * self.I
            self.gen_ffn_bytes += kept * self.neuron_bytes
            self.gen_tokens += self.B
        return plan

    def _after_decode_forward(self) -> None:
        p = self.plan
        tracing, _, inlayer, baseline, _ = self._phases()
        for b, flag in enumerate(inlayer):
            if flag:
                self.has_mask[b] = True
        kind = "prefill" if self.step == 0 else "decode"
        for b in range(self.B):
            self._count(b, kind, self._row_tokens[b], self._pruned_now[b])
        det = self.detector
        if det is not None and self._attn:
            v = self._signal()
            if p.drift_trace_w is not None:
                det.collect_trace(v, p.drift_trace_w)
                self.peak_detector_bytes = max(self.peak_detector_bytes, det.nbytes())
                done = []
                for b in range(self.B):
                    if baseline[b]:
                        self.det_count[b] += self._row_tokens[b]
                        self.baseline_vectors += self._row_tokens[b]
                    done.append(baseline[b] and self._baseline_ready(b, self.step - self.restart[b]))
                if any(done):
                    det.finalize(self._rows(done))
                    for b, flag in enumerate(done):
                        if flag:
                            self.det_done[b], self.n_window[b] = True, 0
            if p.drift_decode_rows is not None:
                det.collect_decode(v, p.drift_decode_rows)
                self.decode_signal_tokens += sum(self._window_rows)
                due = []
                for b in range(self.B):
                    counting = self._window_rows[b]
                    self.n_window[b] += int(counting)
                    due.append(counting and self.n_window[b] == det.W)
                if any(due):
                    self._check(self._rows(due), due)
            if not any(baseline) and det.windows.shape[1]:
                det.drop_windows()
        self.step += 1

    def _baseline_ready(self, b: int, s: int) -> bool:
        """Row b's baseline closes after its local forward s: the phase's last forward reached and enough vectors."""
        n, d = self.seg_m[b], self.spec.drift
        last = n if d.phase == "published" else max(n, 1) - 1
        need = 1 if d.nan_tau_compat or int(d.min_windows) <= 1 else int(d.min_windows) * self.detector.W
        return s >= last and self.det_count[b] >= need

    def _check(self, rows: torch.Tensor, due: list[bool]) -> None:
        cooling = [due[b] and self.last_trigger[b] is not None
                   and self.step - self.last_trigger[b] < self.spec.drift.cooldown for b in range(self.B)]
        if any(cooling):  # windows inside the cool-down close unchecked
            self.detector.discard(self._rows(cooling))
            for b, flag in enumerate(cooling):
                if flag:
                    self.n_window[b] = 0
            due = [d and not c for d, c in zip(due, cooling)]
            if not any(due):
                return
            rows = self._rows(due)
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
        self._fold([b])
        row = self._rows([i == b for i in range(self.B)])
        self.seg_lengths[b].append(self.step + 1 - self.restart[b])
        self.restart[b] = self.step + 1
        self.seg_m[b] = self.spec.retrace_len
        self.last_trigger[b] = self.step
        self.has_mask[b] = False
        self.fresh[b] = True
        self.det_done[b], self.det_count[b] = False, 0
        for _, _, M in self.M.groups():
            M[:, b] = 1
        self.stats.clear_rows(row)
        self.detector.clear_rows(row)
        if self.B == 1:
            self.compacted = False
        self._cache_key = None
