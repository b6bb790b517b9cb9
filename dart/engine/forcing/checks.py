"""The drift detector and the timing controls over one chunk of chunked teacher forcing (step 3 of
dart.engine.forcing): the baseline's vectors of a chunk and its close, the decode windows of its pruned columns
(their cosines in one device read per chunk) and the checks a token-by-token run would make on them, and the
periodic / random rules; the column at which a row fires. What a check or a trigger does to a row is
dart.engine.bookkeeping's, as for the token-by-token driver."""
from __future__ import annotations

import torch


class Checks:
    def __init__(self, c, batch, request0: int):
        """request0: the controller's request count before this call (each continuation logs as a request)."""
        self.c, self.b, self.request0 = c, batch, request0
        self.det = c.detector if c is not None else None

    def baseline(self, rows, j_start, valid_h, live_h, pruned=None) -> list[int | None]:
        """The detector over one chunk: the baseline's vectors (and its close), then, where `pruned` is given, the
        windows of the pruned columns after the baseline. Returns per row the column whose window fired."""
        c, det, sch = self.c, self.det, self.c.schedule
        n, T = valid_h.shape
        if det is None:
            return [None] * n
        wts = torch.zeros(n, T)
        counts, last = [0] * n, [None] * n
        col = torch.arange(T)
        for i in range(n):
            row = c.rows[i]
            if row.base_done:
                continue
            s0 = j_start[i] + 1 - row.origin
            span = live_h[i] & (col <= sch.baseline_close_col(row, s0)) & (col >= max(row.base_from - s0, 0))
            wts[i] = span.float()
            counts[i] = int(span.sum())
            if counts[i]:
                last[i] = s0 + int(span.nonzero()[-1, 0])
        was_done = [r.base_done for r in c.rows]
        if wts.any():
            c.book.baseline(c.captured, wts.to(self.b.dev), counts, last)
        close = [None if was or not r.base_done else last[i] - (j_start[i] + 1 - r.origin)
                 for i, (was, r) in enumerate(zip(was_done, c.rows))]
        if pruned is None:
            return [None] * n
        start = []
        for i in range(n):  # windows begin after the baseline closed (here, or before this chunk: its first pruned column)
            if not c.rows[i].base_done:
                start.append(None)
            elif close[i] is not None:
                start.append(close[i] + 1)
            else:
                first = pruned[i].nonzero()
                start.append(int(first[0, 0]) if len(first) else None)
        return self.windows(rows, j_start, pruned, start)

    def windows(self, rows, j_start, pruned, start) -> list[int | None]:
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
                            device=self.b.dev)
        v = c.captured.gather(1, cols[..., None].expand(n, width, c.captured.shape[-1]))
        cos = det.window_cosines(v, max(n_w))
        values = torch.cat([cos, det.tau[:, None]], dim=1).tolist()  # one read per chunk
        for i, b in enumerate(rows):
            tau = values[i][-1]
            steps = [j_start[i] + start[i] + (x + 1) * W for x in range(n_w[i])]  # forward closing each window
            request = self.request0 + 1 + self.b.names[b]
            for x in range(n_w[i]):  # (inside the cool-down a window closes unchecked: judge gives None)
                c.book.window(i, W)
                if c.book.judge(i, steps[x], values[i][x], tau, request=request, row=0):
                    out[i] = start[i] + (x + 1) * W - 1
                    break
        return out

    def rule_fires(self, rows, j_start, pruned) -> list[int | None]:
        """retrace_at=periodic / random: per row, the pruned column at which the rule fires (the rows' `since` counted
        up to it, or over the whole chunk)."""
        c = self.c
        out: list[int | None] = [None] * len(rows)
        for i, b in enumerate(rows):
            request = self.request0 + 1 + self.b.names[b]
            for col in pruned[i].nonzero().flatten().tolist():
                if c.book.tick(i, j_start[i] + col + 1, request, row=0):
                    out[i] = col
                    break
        return out
