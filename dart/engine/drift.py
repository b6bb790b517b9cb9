"""Topic-drift detector (docs/method.md section 5), one state per row (sequence), on the device.

Signal: the monitored decoder layer's self-attention output (after o_proj), one D-vector per token.
- Tracing (from the (re)start up to the masking step): every vector is added to a running total and to
  consecutive windows of W (kept as window sums; the vectors themselves are never stored).
- Baseline (when tracing ends): c = mean of all traced vectors; cos_i = cos(mean(window_i), c) over the full
  windows (the remainder is dropped; one window of everything if there are fewer than W vectors);
  tau = mu - max(sigma_scale * sigma, min_margin) with mu, sigma the mean and unbiased std of cos_i
  (sigma = 0 with a single window; the published NaN-and-off behaviour only under nan_tau_compat).
- Decoding with a mask: every W vectors, cos(mean(last W), c) against tau: the pressure counter and the trigger
  are the schedule's (dart.engine.schedule.Schedule.press, host-side); the drivers read one (cosine, tau) per window.
"""
from __future__ import annotations

import torch

from dart.engine.spec import DriftSpec


class DriftDetector:
    def __init__(self, spec: DriftSpec, width: int, device):
        self.spec, self.D, self.device = spec, width, device
        self.W = int(spec.window)
        self.fire_steps: set[int] | None = None  # tests: windows closing at these forwards fire, whatever the cosine
        self.reset(0)

    def reset(self, batch: int) -> None:
        z = lambda *s: torch.zeros(*s, dtype=torch.float32, device=self.device)  # noqa: E731
        self.B = batch
        self.total = z(batch, self.D)
        self.count = z(batch)
        self.windows = z(batch, 0, self.D)  # sums of consecutive traced windows
        self.capacity_tokens = 0  # host-side upper bound of traced tokens per row (sizes `windows`)
        self.center = z(batch, self.D)
        self.tau = torch.full((batch,), float("nan"), device=self.device)
        self.current = z(batch, self.D)  # sum of the decode window being filled

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep (and repeat) the state of rows `index` (B',) long."""
        self.B = int(index.numel())
        for name in ("total", "count", "windows", "center", "tau", "current"):
            setattr(self, name, getattr(self, name).index_select(0, index))

    def clear_rows(self, rows: torch.Tensor) -> None:
        keep = (~rows).float()
        for t in (self.total, self.count, self.current):
            t.mul_(keep.view(-1, *([1] * (t.dim() - 1))))
        self.windows.mul_(keep[:, None, None])
        self.tau = torch.where(rows, torch.full_like(self.tau, float("nan")), self.tau)

    def collect_trace(self, v: torch.Tensor, w: torch.Tensor) -> None:
        """v: (B, T, D) signal; w: (B, T) 0/1 weights of the tokens traced in this forward."""
        v, w = v.float(), w.float()
        B, T, _ = v.shape
        self.capacity_tokens += T
        n_win = self.capacity_tokens // self.W + 1
        if self.windows.shape[1] < n_win:
            grown = torch.zeros(B, n_win, self.D, dtype=torch.float32, device=self.device)
            grown[:, : self.windows.shape[1]] = self.windows
            self.windows = grown
        position = self.count[:, None] + w.cumsum(dim=1) - 1  # index of each token in its row's trace
        window_index = (position.clamp_min(0) // self.W).long()  # (B, T)
        self.windows.scatter_add_(1, window_index[..., None].expand(B, T, self.D), v * w[..., None])
        self.total += (v * w[..., None]).sum(dim=1)
        self.count += w.sum(dim=1)

    def finalize(self, rows: torch.Tensor) -> None:
        """Set the baseline and threshold of rows (B,) bool from their traced vectors; frees the window sums."""
        W = self.W
        n = self.count.clamp_min(1.0)
        center = self.total / n[:, None]
        full = torch.div(self.count, W, rounding_mode="floor")  # full windows per row
        nw = self.windows.shape[1]
        idx = torch.arange(nw, device=self.device)[None, :]
        is_full = idx < full[:, None]
        means = self.windows / W
        # fewer than W vectors: one window of everything
        single = (full == 0)[:, None] & (idx == 0)
        means = torch.where(single[..., None], self.total[:, None, :] / n[:, None, None], means)
        valid = (is_full | single).float()
        cos = torch.nn.functional.cosine_similarity(means, center[:, None, :], dim=-1, eps=1e-12)  # (B, nw)
        k = valid.sum(dim=1).clamp_min(1.0)
        mu = (cos * valid).sum(dim=1) / k
        var = ((cos - mu[:, None]).square() * valid).sum(dim=1) / (k - 1).clamp_min(1.0)
        sigma = var.sqrt()
        if self.spec.nan_tau_compat:
            sigma = torch.where(k < 2, torch.full_like(sigma, float("nan")), sigma)
        else:
            sigma = torch.where(k < 2, torch.zeros_like(sigma), sigma)
        margin = torch.maximum(self.spec.sigma_scale * sigma, torch.full_like(sigma, self.spec.min_margin))
        if self.spec.nan_tau_compat:  # torch.maximum propagates NaN, as numpy's max did in the published code
            margin = torch.where(torch.isnan(sigma), sigma, margin)
        tau = mu - margin
        self.center = torch.where(rows[:, None], center, self.center)
        self.tau = torch.where(rows, tau, self.tau)
        self.current = torch.where(rows[:, None], torch.zeros_like(self.current), self.current)
        # the window sums are only needed until the baseline is set
        self.total = torch.where(rows[:, None], torch.zeros_like(self.total), self.total)
        self.count = torch.where(rows, torch.zeros_like(self.count), self.count)
        self.windows = self.windows * (~rows).float()[:, None, None]

    def drop_windows(self) -> None:
        """Free the traced window sums (the controller calls this when no row is tracing)."""
        self.windows = self.windows[:, :0]
        self.capacity_tokens = 0

    def collect_decode(self, v: torch.Tensor, rows: torch.Tensor, steps: int = 1) -> None:
        """Add the signal of the last `steps` positions of v (B, T, D) of rows (B,) bool to their current window: one
        vector per decode step (several: Controller.decode_steps, none of which closes a window before the last)."""
        self.current += v[:, -steps:].float().sum(dim=1) * rows.float()[:, None]

    def discard(self, rows: torch.Tensor) -> None:
        """Close the current window of rows (B,) bool unchecked (a cool-down after a trigger)."""
        self.current = torch.where(rows[:, None], torch.zeros_like(self.current), self.current)

    def close_window(self, rows: torch.Tensor) -> torch.Tensor:
        """Close the current window of rows (B,) bool: cos(mean of its W vectors, baseline center) (B,)."""
        cos = torch.nn.functional.cosine_similarity(self.current / self.W, self.center, dim=-1, eps=1e-12)
        self.current = torch.where(rows[:, None], torch.zeros_like(self.current), self.current)
        return cos

    def below(self, cosine: float, tau: float, step: int) -> bool:
        """A checked window (host values) counts as below the threshold (a NaN tau, the published quirk, never is);
        tests script triggers with fire_steps: windows closing at those forwards are below, whatever the cosine."""
        if self.fire_steps is not None:
            return step in self.fire_steps
        return cosine < tau

    def window_cosines(self, v: torch.Tensor, n_windows: int) -> torch.Tensor:
        """cos(mean(window_i), c) of consecutive windows of W tokens of the signal v (B, T, D) from its first
        token on, for i < n_windows: the checks a token-by-token run would make on these tokens (B, n_windows)."""
        B = v.shape[0]
        means = v[:, : n_windows * self.W].float().reshape(B, n_windows, self.W, -1).sum(dim=2) / self.W
        return torch.nn.functional.cosine_similarity(means, self.center[:, None, :], dim=-1, eps=1e-12)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in
                   (self.total, self.count, self.windows, self.center, self.tau, self.current))
