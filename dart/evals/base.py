"""The Evaluator contract the Lightning loop drives.

    setup(ctx)            once, with the model, tokenizer and strategy in place
    batches() -> list     the units of work (one Lightning test step each; the progress bar counts them)
    step(batch) -> Any    run one unit on the model
    finalize(outputs) -> {metric: value}   aggregate; may write per-sample files into ctx.run_dir
An evaluator with `eval.matched` (eval=switch / overview) also offers `matched_sparsity(strategy)` and
`score_matched(strategy)`: a second strategy on the same samples after the run (dart.pipeline runs it).
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
    matched: str | None = None  # eval.matched: a strategy to score after the run at its effective sparsity

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
