"""The engine's schedule run in chunks (dart.engine.forcing): rounds over rows in the same phase.

A round takes a cohort of rows whose segments started together (every row right after the prompts, or rows that
re-trace after a trigger), with their KV cache and engine state in place, and runs, in as few forwards as the
schedule allows:
- the trace forwards (masking_step - 1 after the prompt, retrace_tokens after a trigger), dense, and the masks,
  built inside the same forward as the first pruned chunk (each layer's masks from its traced positions, which
  run dense) unless the masks need every layer's statistics (allocation=auto) or a single long row gains more
  from compaction (then: a trace forward, the masks, and a compacted chunk);
- pruned chunks: the first round's in one forward to the end; after a trigger of `retrace_chunk` pruned tokens
  past the detector's baseline, doubling, so that a row that fires again soon wastes little;
- the detector as the token-by-token schedule runs it (dart.engine.schedule): the baseline collects the
  monitored vectors of the segment through the phase's last forward and until it holds min_windows windows;
  later pruned tokens close a window every W, checked against the baseline (not inside the cool-down after a
  trigger) with the host-side pressure counter; chunks end on window boundaries.
A row whose window fires is exact up to and including that forward; it is parked with its cache up to there and
its host state, and the parked rows re-trace together in the next round (their caches padded with hidden columns).
"""
from __future__ import annotations

import torch

from dart.engine.plan import ROWS, Plan


class Rounds:
    def _rounds(self) -> None:
        self.parked: list[dict] = []
        self._process(list(range(self.B)), first=True)
        while self.parked:
            batch, self.parked = (self.parked, []) if self.holes else (self.parked[:1], self.parked[1:])
            self._restore(batch)
            self._process([p["row"] for p in batch], first=False)

    # ------------------------------------------------------------------ one cohort
    def _process(self, rows: list[int], first: bool) -> None:
        c, det = self.c, self.det
        seg = c.seg_m[0]  # the same for the whole cohort: masking_step, or retrace_tokens after a trigger
        t = max(seg, 1) - 1 if first else max(seg, 1)  # trace forwards left (the prefill traced for the first)
        T1 = max(0, min(t, max(self.N[b] - self.j_next[b] for b in rows)))
        long_single = (first and len(rows) == 1 and c.spec.execution != "masked"
                       and self.N[rows[0]] - self.j_next[rows[0]] - T1 >= self.compact_min)
        merge = T1 > 0 and (seg == 0 or not (c.spec.global_build or long_single))
        if T1 > 0 and not merge:
            self._trace_alone(rows, T1)
            T1 = 0
        if seg >= 1 and not merge:
            self._build_between(rows)
        cap = None if first or det is None else self.retrace_chunk
        head = True
        while rows:
            T = max(self.N[b] - self.j_next[b] for b in rows)
            if T <= 0:
                return
            if cap is not None:
                # the first chunk ends `cap` tokens after the baseline closes (the same column for the cohort),
                # later ones hold `cap` tokens: every chunk ends on a window boundary
                T = min(T, self._close_col(0, self.j_next[rows[0]]) + 1 + cap if head else cap)
                cap *= 2
            rows = self._chunk_forward(rows, T1, T, merge)
            T1, merge, head = 0, False, False

    def _close_col(self, i: int, j_start: int) -> int:
        """Chunk column (from j_start) at which row i's baseline closes if it has not: the phase's last forward
        reached and enough vectors collected (as DecodeSchedule._baseline_ready)."""
        c = self.c
        d = c.spec.drift
        n = c.seg_m[i]
        last = n if d.phase == "published" else max(n, 1) - 1
        need = 1 if d.nan_tau_compat or int(d.min_windows) <= 1 else int(d.min_windows) * self.det.W
        s0 = j_start + 1 - c.restart[i]  # the chunk's first forward, relative to the segment's start
        return max(last - s0, need - 1 - c.det_count[i], 0)

    def _trace_alone(self, rows: list[int], T1: int) -> None:
        """The trace forwards of every row as one dense forward (the masks are built after it)."""
        c = self.c
        ids, valid, pos = self._chunk(rows, T1)
        k = self._forward_index(rows, T1)
        live = valid.cpu() & ((k < self.r) if self.r is not None else True)
        plan = self._trace_plan(live.to(self.dev), T1, rows)
        j_start = [self.j_next[b] for b in rows]
        logits = self._forward(ids, valid, pos, plan)
        self._emit(rows, j_start, logits)
        c.tokens_seen += valid.sum()
        c.tokens_traced += live.sum()
        for i in range(len(rows)):
            if live[i].any():
                c.fresh[i] = False
            c._count(i, "decode", int(valid[i].sum()), pruned=False)
        self._baseline(rows, j_start, valid.cpu(), live, [None] * len(rows))
        for b in rows:
            self.j_next[b] = min(self.j_next[b] + T1, self.N[b])

    def _trace_plan(self, live: torch.Tensor, t: int, rows: list[int]) -> Plan:
        """Statistic weights for the first t columns' live positions (the rest is not traced)."""
        c = self.c
        mask = live.clone()
        mask[:, t:] = False
        w, decay = self._trace_weights(mask, prefill=False, fresh=c.fresh[0])
        return Plan(trace_w=w, decay=decay, align=c.stats.alignment, capture=self.det is not None)

    def _build_between(self, rows: list[int]) -> None:
        """The masks of the rows with tokens left and not released, between forwards."""
        c, r = self.c, self.r
        build = [self.j_next[b] < self.N[b] and (r is None or self.j_next[b] + 1 < r) for b in rows]
        if any(build):
            c._build(c._rows(build))
            c.builds += sum(build)
            for i, flag in enumerate(build):
                if flag:
                    c.has_mask[i] = True
        if (len(rows) == 1 and c.has_mask[0] and c.spec.execution != "masked"
                and (c.spec.execution == "compact" or self.N[rows[0]] - self.j_next[rows[0]] >= self.compact_min)):
            c._maybe_compact()
        c._pending_compact = False

    # ------------------------------------------------------------------ one forward
    def _chunk_forward(self, rows: list[int], T1: int, T: int, merge: bool) -> list[int]:
        """T1 trace columns (a merged round) then pruned columns, up to T per row. Checks the drift windows, parks
        the rows that fired, drops the finished ones; returns the rows that go on."""
        c, r = self.c, self.r
        n = len(rows)
        ids, valid, pos = self._chunk(rows, T)
        k = self._forward_index(rows, T)
        col = torch.arange(T)[None, :]
        valid_h = valid.cpu()
        open_h = (k < r) if r is not None else torch.ones_like(valid_h)
        seg = c.seg_m[0]
        if merge:
            trace = valid_h & open_h & (col < T1)
            plan = self._trace_plan(trace.to(self.dev), T1, rows)
            first_pruned = T1 if seg >= 1 else 0
            build = [bool((valid_h[i, first_pruned:] & open_h[i, first_pruned:]).any()) for i in range(n)]
            for i in range(n):  # the trace tokens come before the masks: the budget counts them first
                c._count(i, "decode", int(trace[i].sum()), pruned=False)
            plan.build_rows = c._rows(build) if any(build) else None
            c.builds += sum(build)
            has = torch.tensor(build)[:, None]
            pruned = valid_h & open_h & has & (col >= first_pruned)
            plan.capture = self.det is not None
        else:
            trace = torch.zeros_like(valid_h)
            plan = Plan(capture=self.det is not None)
            pruned = valid_h & open_h & torch.tensor(c.has_mask)[:, None]
        plan.prune = pruned.to(self.dev)
        if not merge and n == 1 and c.compacted and c.has_mask[0] and bool((pruned | ~valid_h).all()):
            plan.prune, plan.compact = ROWS, c.kept_prefix
        j_start = [self.j_next[b] for b in rows]
        logits = self._forward(ids, valid, pos, plan)
        self._emit(rows, j_start, logits)
        if merge:
            for i, flag in enumerate(build):
                if flag:
                    c.has_mask[i] = True
                if trace[i].any():
                    c.fresh[i] = False
            c.tokens_traced += trace.sum()
        fired = self._baseline(rows, j_start, valid_h, valid_h & open_h, [None] * n, pruned)
        # counting, up to each row's trigger (its later tokens are recomputed)
        upto = [T if f is None else f + 1 for f in fired]
        for i in range(n):
            u = upto[i]
            n_pruned = int(pruned[i, :u].sum())
            n_dense = int((valid_h[i, :u] & ~pruned[i, :u] & ~trace[i, :u]).sum())
            c._count(i, "decode", n_pruned, pruned=True)
            c._count(i, "decode", n_dense, pruned=False)
            c.tokens_seen += float(valid_h[i, :u].sum())
        for i, b in enumerate(rows):
            self.j_next[b] = min(self.j_next[b] + T, self.N[b]) if fired[i] is None else self.j_next[b] + fired[i] + 1
        go_on = [i for i, b in enumerate(rows) if fired[i] is None and self.j_next[b] < self.N[b]]
        states = c.row_states() if any(f is not None for f in fired) else None
        for i, b in enumerate(rows):
            if fired[i] is not None and self.j_next[b] < self.N[b]:
                self._park(i, b, T - fired[i] - 1, states[i], j_start[i] + fired[i] + 2)
        if len(go_on) < n:
            if not go_on:
                return []
            self._select(torch.tensor(go_on, device=self.dev))
        return [rows[i] for i in go_on]

    # ------------------------------------------------------------------ the detector
    def _baseline(self, rows, j_start, valid_h, live_h, fired, pruned=None) -> list[int | None]:
        """The detector over one chunk: the baseline's vectors (and its close), then, where `pruned` is given,
        the windows of the pruned columns after the baseline. Returns per row the column whose window fired."""
        c, det = self.c, self.det
        if det is None:
            return fired
        n, T = valid_h.shape
        w = torch.zeros(n, T)
        close = [None] * n
        for i in range(n):
            if c.det_done[i]:
                continue
            cc = self._close_col(i, j_start[i])
            span = live_h[i].clone()
            span[cc + 1:] = False
            w[i] = span.float()
            c.det_count[i] += int(span.sum())
            c.baseline_vectors += int(span.sum())
            if cc < T and bool(live_h[i, cc]):
                close[i] = cc
        if w.any():
            det.collect_trace(c.captured, w.to(self.dev))
            self.c.peak_detector_bytes = max(self.c.peak_detector_bytes, det.nbytes())
        if any(x is not None for x in close):
            det.finalize(c._rows([x is not None for x in close]))
            for i, x in enumerate(close):
                if x is not None:
                    c.det_done[i] = True
            if all(c.det_done):
                det.drop_windows()
        if pruned is None:
            return fired
        start = []
        for i in range(n):  # windows begin after the baseline closed (here, or before this chunk: its first pruned column)
            if not c.det_done[i]:
                start.append(None)
            elif close[i] is not None:
                start.append(close[i] + 1)
            else:
                first = pruned[i].nonzero()
                start.append(int(first[0, 0]) if len(first) else None)
        return self._windows(rows, j_start, pruned, start)

    def _windows(self, rows, j_start, pruned, start) -> list[int | None]:
        """Windows of W pruned columns from each row's start column; returns the column whose window fired."""
        c, det = self.c, self.det
        W = det.W
        n = len(rows)
        out: list[int | None] = [None] * n
        n_w = []
        for i in range(n):
            if start[i] is None:
                n_w.append(0)
                continue
            run = pruned[i, start[i]:]
            stop = int(run.long().cumprod(0).sum())  # pruned columns are contiguous until a release
            n_w.append(stop // W)
        width = max(n_w) * W
        if width == 0:
            return out
        cols = torch.tensor([[min((start[i] or 0) + x, pruned.shape[1] - 1) for x in range(width)] for i in range(n)],
                            device=self.dev)
        v = c.captured.gather(1, cols[..., None].expand(n, width, c.captured.shape[-1]))
        cos = det.window_cosines(v, max(n_w))
        values = torch.cat([cos, det.tau[:, None]], dim=1).tolist()  # one read per chunk
        cooldown = int(c.spec.drift.cooldown)
        for i, b in enumerate(rows):
            tau = values[i][-1]
            steps = [j_start[i] + start[i] + (x + 1) * W for x in range(n_w[i])]  # forward closing each window
            checked = [x for x in range(n_w[i])
                       if c.last_trigger[i] is None or steps[x] - c.last_trigger[i] >= cooldown]
            if det.fire_steps is not None:
                below = [steps[x] in det.fire_steps for x in checked]
            else:
                below = [values[i][x] < tau for x in checked]  # NaN tau never fires
            hit, self.pressure[b] = det.scan_pressure(below, self.pressure[b])
            last = len(checked) - 1 if hit is None else hit
            request = self.request0 + 1 + self.names[b]
            for y in range(last + 1):
                x = checked[y]
                entry = {"request": request, "row": 0, "step": steps[x], "cosine": values[i][x], "threshold": tau}
                c.window_log.append(entry)
                if y == hit:
                    c.triggers.append(entry)
            c.checks += last + 1
            c.decode_signal_tokens += (checked[hit] + 1) * W if hit is not None else n_w[i] * W
            if hit is not None:
                out[i] = start[i] + (checked[hit] + 1) * W - 1
        return out

    # ------------------------------------------------------------------ parked rows
    def _park(self, i: int, b: int, drop: int, state: dict, restart: int) -> None:
        """Keep row b's KV cache up to its trigger (the last `drop` columns are after it) and its host state, as
        the token-by-token schedule leaves a row that fired: its segment ended, it re-traces from `restart`."""
        cols = self.amask.shape[1] - drop
        kv = [(layer.keys[i : i + 1, :, :cols], layer.values[i : i + 1, :, :cols]) for layer in self.cache.layers]
        state = dict(state)
        state["seg_lengths"] = list(state["seg_lengths"]) + [restart - state["restart"]]
        state.update(restart=restart, seg_m=self.c.spec.retrace_len, last_trigger=restart - 1, has_mask=False,
                     fresh=True, det_done=False, det_count=0, n_window=0)
        self.parked.append({"row": b, "kv": kv, "amask": self.amask[i : i + 1, :cols], "state": state})
        self.pressure[b] = 0

    def _restore(self, batch: list[dict]) -> None:
        """The cache, attention mask and engine state of parked rows (shorter caches padded with hidden columns
        on the right)."""
        from transformers import DynamicCache

        width = max(p["amask"].shape[1] for p in batch)

        def pad(x, dim):
            extra = width - x.shape[dim]
            if not extra:
                return x
            shape = list(x.shape)
            shape[dim] = extra
            return torch.cat([x, x.new_zeros(shape)], dim=dim)

        layers = len(batch[0]["kv"])
        self.cache = DynamicCache([(torch.cat([pad(p["kv"][l][0], 2) for p in batch]),
                                    torch.cat([pad(p["kv"][l][1], 2) for p in batch])) for l in range(layers)])
        self.amask = torch.cat([pad(p["amask"], 1) for p in batch])
        self.c._reset_rows(len(batch))
        self.c.set_row_states([p["state"] for p in batch])
