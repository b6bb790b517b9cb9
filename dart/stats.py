"""Statistics and confidence intervals, the one place every evaluation (dart.evals) and every table (dart.tables)
takes them from (docs/method.md section 9: every accuracy or fidelity figure carries n and a 95% interval).

- `bootstrap_ci`: percentile bootstrap of the mean over samples, with a fixed seed (the same data gives the same
  interval on every machine); `paired_diff_ci` is the same on per-item differences of two runs over the same items;
  `paired_ratio` the median of per-repeat ratios of two interleaved timings, with a bootstrap interval (dart.bench).
- `stderr`, `binary_stderr`, `combined_stderr`, `diff_stderr`, `normal_ci`: the normal interval from a standard
  error, as lm-eval reports it (`acc_stderr` = sample standard deviation / sqrt(n)).
- `reported_interval`: the interval results.json reports beside a metric (`<key>_lo`/`_hi` bounds, else
  `<key>_stderr`).

Pure numpy (no torch).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
_CHUNK = 4_000_000  # index draws per bootstrap chunk (bounds memory for large n)
INTERVAL_SUFFIXES = ("_lo", "_hi", "_stderr")  # results.json: `<key>_lo`, `<key>_hi`, `<key>_stderr` beside `<key>`


def bootstrap_ci(values: Sequence[float], resamples: int = RESAMPLES, level: float = LEVEL,
                 seed: int = SEED, statistic: str = "mean") -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean (or `statistic="median"`) of `values` (None for no values).
    Resamples `len(values)` items with replacement `resamples` times from numpy's PCG64 seeded with `seed`; the
    interval is the (1-level)/2 and (1+level)/2 percentiles (linear interpolation) of the resampled statistics.
    Constant data gives a zero-width interval; one value gives (value, value)."""
    if statistic not in ("mean", "median"):
        raise ValueError(f"statistic={statistic!r}: mean or median")
    x = np.asarray([float(v) for v in values], dtype=np.float64)
    n = x.size
    if n == 0:
        return None
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r} must be in (0, 1)")
    if int(resamples) < 1:
        raise ValueError(f"resamples={resamples!r} must be a positive integer")
    rng = np.random.default_rng(seed)
    means = np.empty(int(resamples), dtype=np.float64)
    per = max(1, _CHUNK // n)
    for lo in range(0, int(resamples), per):
        hi = min(int(resamples), lo + per)
        sample = x[rng.integers(0, n, size=(hi - lo, n))]
        means[lo:hi] = sample.mean(axis=1) if statistic == "mean" else np.median(sample, axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    a, b = np.percentile(means, [tail, 100.0 - tail])
    return float(a), float(b)


def paired_diff_ci(a: Sequence[float], b: Sequence[float], resamples: int = RESAMPLES, level: float = LEVEL,
                   seed: int = SEED) -> tuple[float, float] | None:
    """Bootstrap interval of mean(a - b) over paired items (the same documents scored by two runs)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length ({len(a)} vs {len(b)})")
    return bootstrap_ci([float(x) - float(y) for x, y in zip(a, b)], resamples, level, seed)


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> tuple[float | None, list[float], tuple[float, float] | None]:
    """Paired ratios of two measurements taken in the same repeats (a[i] / b[i]; a zero b[i] is skipped): their
    median, the ratios, and the bootstrap interval of the median (None with fewer than two ratios)."""
    ratios = [float(x) / float(y) for x, y in zip(a, b) if y]
    med = float(np.median(ratios)) if ratios else None
    return med, ratios, (bootstrap_ci(ratios, statistic="median") if len(ratios) > 1 else None)


def mean(values: Sequence[float]) -> float | None:
    return float(np.mean(np.asarray(values, dtype=np.float64))) if len(values) else None


def stderr(values: Sequence[float]) -> float | None:
    """Sample standard deviation / sqrt(n), as lm-eval's `mean_stderr` (None below 2 values)."""
    n = len(values)
    if n < 2:
        return None
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=1) / math.sqrt(n))


def binary_stderr(p: float, n: int | float) -> float | None:
    """`stderr` of n values that are each 0 or 1 with mean p: sqrt(p (1 - p) / (n - 1)), exactly (None for n < 2)."""
    n = int(n)
    if n < 2 or p is None or not 0.0 <= p <= 1.0:
        return None
    return math.sqrt(p * (1.0 - p) / (n - 1))


def combined_stderr(stderrs: Sequence[float | None]) -> float | None:
    """Standard error of the unweighted mean of independent estimates: sqrt(sum se^2) / k (None if any is None)."""
    if not stderrs or any(s is None for s in stderrs):
        return None
    return math.sqrt(sum(float(s) ** 2 for s in stderrs)) / len(stderrs)


def diff_stderr(se_a: float | None, se_b: float | None) -> float | None:
    """Standard error of the difference of two independent estimates: sqrt(se_a^2 + se_b^2) (None if either is)."""
    if se_a is None or se_b is None:
        return None
    return (se_a ** 2 + se_b ** 2) ** 0.5


def normal_ci(value: float | None, se: float | None, z: float = Z95) -> tuple[float, float] | None:
    """value ± z se (the 95% normal interval by default); None when either is missing."""
    if value is None or se is None:
        return None
    return value - z * se, value + z * se


@dataclasses.dataclass(frozen=True)
class Interval:
    lo: float
    hi: float
    half: float | None = None  # z se when the interval is value ± z se (from a standard error), None for bounds


def _number(v) -> bool:
    return isinstance(v, (int, float))


def reported_interval(metrics: Mapping, key: str, z: float = Z95) -> Interval | None:
    """The 95% interval results.json reports beside metric `key`: its bounds `<key>_lo`, `<key>_hi` (a bootstrap)
    where it has both, else value ± z `<key>_stderr`; None when it has neither (or no value)."""
    value = metrics.get(key)
    lo, hi, se = (metrics.get(key + sfx) for sfx in INTERVAL_SUFFIXES)
    if _number(lo) and _number(hi):
        return Interval(float(lo), float(hi))
    if _number(se) and _number(value):
        return Interval(value - z * se, value + z * se, z * se)
    return None


def bits(values: Sequence[float]) -> str:
    """Per-item 0/1 correctness as a compact string ("0110..."), for results.json."""
    out = []
    for v in values:
        f = float(v)
        if f not in (0.0, 1.0):
            raise ValueError(f"bits() takes 0/1 values, got {v!r}")
        out.append("1" if f == 1.0 else "0")
    return "".join(out)


def from_bits(s: str) -> list[float]:
    """The inverse of `bits`."""
    if any(ch not in "01" for ch in s):
        raise ValueError("not a 0/1 string")
    return [1.0 if ch == "1" else 0.0 for ch in s]
