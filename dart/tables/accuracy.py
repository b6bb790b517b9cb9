"""One benchmark's accuracy in one run with its uncertainty (docs/method.md section 9: every accuracy carries n and a
95% interval), and differences of two runs.

Sources, best first: lm-eval's stderr (`<task>/<metric>_stderr` in metrics), the per-document 0/1 results
(results.json `eval.per_doc`, which the harness stores) as sample sd / sqrt(n), and for a single task of 0/1
items the same number from its accuracy p and n alone, sqrt(p (1 - p) / (n - 1)) (exact for 0/1 items; so
older results get intervals too). A benchmark that averages several tasks (gpqa) or subjects (mmlu, macro)
combines them as independent: sqrt(sum se^2) / k. A difference of two runs on the same documents uses the
per-document differences (paired) where both runs stored them, else sqrt(se_a^2 + se_b^2).
Intervals shown are value ± 1.96 se.
"""
from __future__ import annotations

import dataclasses

from dart.stats import Z95, binary_stderr, combined_stderr, diff_stderr, from_bits, stderr
from dart.tables.collect import Record
from dart.tables.render import MISSING

CI_NOTE = ("±: 95% interval, 1.96 × standard error (lm-eval's stderr where it gives one, else from the "
           "per-document results: sample sd / √n); n: documents scored.")


@dataclasses.dataclass
class Estimate:
    value: float | None
    se: float | None = None
    n: int | None = None
    where: str | None = None  # "real" | "offline" (a ten benchmark), None otherwise
    docs: dict | None = None  # {task: {leaf: [0/1 per document]}}, None when the run did not store them

    def same_as(self, other: "Estimate") -> bool:
        """Identical results: equal values, and equal per-document results where both have them."""
        if self.value is None or other.value is None or self.value != other.value:
            return False
        return self.docs is None or other.docs is None or self.docs == other.docs


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _leaf_docs(r: Record, task: str, metric: str) -> dict[str, list[float]] | None:
    per_doc = (r.results.get("eval") or {}).get("per_doc") or {}
    if task in per_doc:
        keys = [task]
    else:
        keys = sorted(k for k in per_doc if k.startswith(task + "_"))
    if not keys or any(metric not in (per_doc[k] or {}) for k in keys):
        return None
    return {k: from_bits(per_doc[k][metric]) for k in keys}


def task_estimate(r: Record, task: str, metric: str) -> Estimate:
    """One lm-eval task (or group) of a ten run: value, se, n, per-leaf documents."""
    prefix = f"{r.eval_name}/{task}"
    value, n = _num(r.metrics.get(f"{prefix}/{metric}")), _num(r.metrics.get(f"{prefix}/n"))
    docs = _leaf_docs(r, task, metric)
    se = _num(r.metrics.get(f"{prefix}/{metric}_stderr"))
    if se is None and docs is not None:
        ses = [stderr(d) for d in docs.values()]
        se = ses[0] if len(ses) == 1 else combined_stderr(ses)
    group = f"{prefix}/{metric}_micro" in r.metrics or f"{prefix}/acc_micro" in r.metrics or (docs and len(docs) > 1)
    if se is None and value is not None and n is not None and not group:
        se = binary_stderr(value, n)
    return Estimate(value, se, None if n is None else int(n), docs={task: docs} if docs is not None else None)


def mean_of(parts: list[Estimate], where: str | None = None) -> Estimate:
    """The unweighted mean of independent estimates (a benchmark over its tasks, the average over benchmarks)."""
    if not parts or any(p.value is None for p in parts):
        return Estimate(None, where=where)
    value = sum(p.value for p in parts) / len(parts)
    se = parts[0].se if len(parts) == 1 else combined_stderr([p.se for p in parts])
    n = None if any(p.n is None for p in parts) else sum(p.n for p in parts)
    docs = None
    if all(p.docs is not None for p in parts):
        docs = {}
        for p in parts:
            docs.update(p.docs)
    return Estimate(value, se, n, where, docs)


def benchmark_estimate(r: Record, tasks: list[str], metric: str, where: str | None) -> Estimate:
    return mean_of([task_estimate(r, t, metric) for t in tasks], where)


def diff(a: Estimate, b: Estimate) -> Estimate:
    """a - b, with a paired se over the same documents where both have per-document results of equal shape."""
    if a.value is None or b.value is None:
        return Estimate(None)
    se = None
    if a.docs is not None and b.docs is not None and a.docs.keys() == b.docs.keys():
        task_ses = []
        for t in a.docs:
            la, lb = a.docs[t], b.docs[t]
            if la.keys() != lb.keys() or any(len(la[k]) != len(lb[k]) for k in la):
                task_ses = None
                break
            leaf = [stderr([x - y for x, y in zip(la[k], lb[k])]) for k in la]
            task_ses.append(leaf[0] if len(leaf) == 1 else combined_stderr(leaf))
        if task_ses:
            se = task_ses[0] if len(task_ses) == 1 else combined_stderr(task_ses)
    if se is None:
        se = diff_stderr(a.se, b.se)
    return Estimate(a.value - b.value, se, a.n)


def mean_diff(parts: list[Estimate]) -> Estimate:
    """The mean of per-benchmark differences (each already paired), benchmarks independent."""
    return mean_of(parts)


def fmt(e: Estimate | None, scale: float = 100.0, digits: int = 1, with_n: bool = False, signed: bool = False) -> str:
    """"50.0 ± 9.8" (scaled; ± the 95% half-width), "+3.1 ± 2.0" (signed), " (n=45)" appended with with_n;
    "–" when there is no value."""
    if e is None or e.value is None:
        return MISSING
    v = f"{scale * e.value:{'+' if signed else ''}.{digits}f}"
    if e.se is not None:
        v += f" ± {scale * Z95 * e.se:.{digits}f}"
    if with_n and e.n is not None:
        v += f" (n={e.n})"
    return v
