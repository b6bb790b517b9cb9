"""The machine's streaming read bandwidth: what a memory-bound decode step can reach at most.

A read-only pass over a buffer several times the last-level cache (so it streams from memory, as a decode step's
weights do), on every torch thread: the decode kernels' own vector read loop (dart.kernels) and torch's `sum` over
the same bytes; the faster of the two is the machine's figure. `dart.bench` measures it in every repeat, beside the
decode it is compared with.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

MIN_BYTES = 1 << 30


def last_level_cache_bytes() -> int:
    """The largest cache of CPU 0 (Linux sysfs), else 32 MiB."""
    best = 0
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (d / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            best = max(best, int(text.rstrip("KMG")) * scale)
        except ValueError:
            continue
    return best or 32 << 20


class ReadProbe:
    """A buffer of max(1 GiB, 4 x the last-level cache), touched once; `measure()` gives GB/s."""

    def __init__(self, nbytes: int | None = None):
        self.nbytes = int(nbytes or max(MIN_BYTES, 4 * last_level_cache_bytes()))
        self.buf = torch.ones(self.nbytes // 4, dtype=torch.float32)

    def measure(self, passes: int = 5) -> dict[str, float]:
        """{"read_gb_s": the faster median, "kernel_gb_s", "torch_sum_gb_s"} over `passes` passes of each."""
        from dart import kernels

        def rate(fn) -> float:
            fn()  # the first pass after other work: not counted
            times = []
            for _ in range(passes):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return self.nbytes / statistics.median(times) / 1e9

        out = {"torch_sum_gb_s": rate(lambda: self.buf.sum())}
        ext = kernels.ext()
        if ext is not None:
            out["kernel_gb_s"] = rate(lambda: ext.read_pass(self.buf))
        out["read_gb_s"] = max(out.values())
        return out
