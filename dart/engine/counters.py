"""A run's accounting of what the engine did: requests, mask builds, drift checks, tokens seen and traced, the drift
detector's vectors, the time spent building and compacting masks, and the trigger and window logs.

The controller owns one `Counters` (`controller.counts`); the drivers report through `Controller.count(...)`, and
readers (the strategy's summary, the overhead report, benches, tests) read `controller.counts`. Token counts are
device scalars (read once, in the summary), the rest host numbers.
"""
from __future__ import annotations

import torch


class Counters:
    def __init__(self, device):
        self.requests = 0  # requests started (a batch of rows is one request)
        self.builds = 0  # row mask builds (a build of B rows counts B)
        self.checks = 0  # drift checks (one per row and window)
        self.tokens_seen = torch.zeros((), dtype=torch.float64, device=device)
        self.tokens_traced = torch.zeros((), dtype=torch.float64, device=device)
        self.decode_signal_tokens = 0  # monitored vectors added to decode windows
        self.baseline_vectors = 0  # monitored vectors collected into baselines
        self.build_seconds = 0.0  # mask building and compaction, wall time
        self.peak_detector_bytes = 0
        self.triggers: list[dict] = []  # every re-trace: request, row, step, cause
        self.window_log: list[dict] = []  # every drift check: request, row, step, cosine, threshold

    def add(self, seen=None, traced=None, builds: int = 0, checks: int = 0, baseline: int = 0, signal: int = 0,
            seconds: float = 0.0, detector_bytes: int = 0, requests: int = 0, trigger: dict | None = None,
            window: dict | None = None) -> None:
        """Add what one step of a driver did (seen/traced: token counts, device tensors or numbers; trigger, window:
        a re-trace's or a drift check's log entry)."""
        if seen is not None:
            self.tokens_seen += seen
        if traced is not None:
            self.tokens_traced += traced
        self.builds += int(builds)
        self.checks += int(checks)
        self.baseline_vectors += int(baseline)
        self.decode_signal_tokens += int(signal)
        self.build_seconds += float(seconds)
        self.peak_detector_bytes = max(self.peak_detector_bytes, int(detector_bytes))
        self.requests += int(requests)
        if trigger is not None:
            self.triggers.append(trigger)
        if window is not None:
            self.window_log.append(window)
