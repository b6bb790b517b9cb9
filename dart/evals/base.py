"""The Evaluator contract the Lightning loop drives.

    setup(ctx)            once, with the model, tokenizer and strategy in place
    batches() -> list     the units of work (one Lightning test step each; the progress bar counts them)
    step(batch) -> Any    run one unit on the model
    finalize(outputs) -> {metric: value}   aggregate; may write per-sample files into ctx.run_dir
An evaluator with `eval.matched` (eval=switch / overview) also offers `matched_sparsities(strategy)`,
`score_kind(strategy, kind)` and `matched_row(outputs)`: other strategies on the same samples after the run, each
kind at the run's effective sparsity on it (dart.pipeline runs them).
Metrics are reported under "<eval name>/<metric>". `notes` collects plain-language remarks (for instance a
real task that could not be loaded offline) that the run prints and stores in results.json.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class EvalContext:
    model: Any
    tokenizer: Any
    strategy: Any
    run_dir: Path
    model_cfg: Any = None
    device: str = "cpu"
    dense_cache: Any = None  # dart.evals.dense_cache.DenseCache (run setting dense_cache=true), else None


class Evaluator:
    name: str = "eval"
    matched: tuple[str, ...] = ()  # eval.matched: strategies to score after the run at its effective sparsity
    by_kind: dict[str, float | None] | None = None  # effective sparsity per subset (finalize)

    def __init__(self, name: str | None = None, limit: int | None = None, **kwargs):
        if name:
            self.name = name
        if limit is not None and int(limit) < 1:
            from dart.errors import ConfigError

            raise ConfigError(f"eval.limit={limit!r} must be a positive integer or null (no limit)")
        self.limit = limit
        self.notes: list[str] = []
        self.ctx: EvalContext | None = None
        self.extra: dict[str, Any] = {}  # extra results.json sections (e.g. per-sample file names)

    def setup(self, ctx: EvalContext) -> None:
        self.ctx = ctx

    def batches(self) -> list:
        raise NotImplementedError

    def step(self, batch) -> Any:
        raise NotImplementedError

    def finalize(self, outputs: list) -> dict[str, float | None]:
        raise NotImplementedError

    def effective_by_kind(self) -> dict[str, float | None] | None:
        """Effective sparsity per subset of the samples (eval=switch: per pair kind and "all"), after finalize;
        None where the evaluation has no subsets. results.json sparsity.effective_by_kind."""
        return self.by_kind
