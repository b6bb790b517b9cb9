"""The Lightning side: inference-only evaluation as `Trainer.test`, with the pruning strategy as a Callback.

EvalModule wraps the Hugging Face model and an Evaluator; each evaluator batch is one test step (so long work
shows Lightning's progress bar) and `on_test_epoch_end` aggregates the metrics. StrategyCallback attaches the
strategy's hooks when testing starts and removes them when it ends. PlainProgress prints a plain progress line
every so often when stdout is not a terminal (nohup, SLURM), where Lightning's bar shows nothing until the end."""
from __future__ import annotations

import sys
import time

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from dart.evals.base import EvalContext, Evaluator


class _Items(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class EvalModule(pl.LightningModule):
    def __init__(self, model, evaluator: Evaluator, ctx: EvalContext):
        super().__init__()
        self.model = model
        self.evaluator = evaluator
        self.ctx = ctx
        self.outputs: list = []
        self.metrics: dict = {}

    def setup(self, stage: str) -> None:
        # Lightning builds the test dataloader before on_test_start, so the evaluator is set up here
        self.ctx.device = str(self.trainer.strategy.root_device)
        self.evaluator.setup(self.ctx)

    def test_dataloader(self):
        return DataLoader(_Items(self.evaluator.batches()), batch_size=None, collate_fn=lambda x: x)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # evaluators place their own tensors

    def test_step(self, batch, batch_idx):
        self.outputs.append(self.evaluator.step(batch))

    def on_test_epoch_end(self) -> None:
        self.metrics = self.evaluator.finalize(self.outputs)
        numeric = {f"{self.evaluator.name}/{k}": float(v) for k, v in self.metrics.items() if v is not None}
        if numeric and self.logger is not None:
            self.logger.log_metrics(numeric)


class StrategyCallback(pl.Callback):
    def __init__(self, strategy, tokenizer=None):
        self.strategy = strategy
        self.tokenizer = tokenizer

    def on_test_start(self, trainer, pl_module) -> None:
        self.strategy.attach(pl_module.model, self.tokenizer)

    def on_test_end(self, trainer, pl_module) -> None:
        self.strategy.detach()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(label: str, done: int, total: int | None, elapsed: float) -> str:
    """"[dart] perplexity: step 3/40, 0:42 elapsed, ETA 8:38"; the ETA assumes the remaining steps take as long
    as the finished ones did on average."""
    if total:
        eta = _duration(elapsed / done * (total - done)) if done else "?"
        return f"[dart] {label}: step {done}/{total}, {_duration(elapsed)} elapsed, ETA {eta}"
    return f"[dart] {label}: step {done}, {_duration(elapsed)} elapsed"


class PlainTicker:
    """Plain progress for output that is not a terminal: `step()` once per finished step prints one line at most
    every `interval_s` seconds (step i/n, elapsed, ETA; none for the last step), `finish()` one closing line.
    `clock` and `stream` are for tests."""

    def __init__(self, label: str, total: int | None, interval_s: float, clock=time.monotonic, stream=None):
        self.label, self.total, self.interval_s, self.clock, self.stream = label, total, float(interval_s), clock, stream
        self.done = 0
        self.t0 = self.last = clock()

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)

    def step(self, done: int | None = None) -> None:
        self.done = self.done + 1 if done is None else done
        now = self.clock()
        if now - self.last >= self.interval_s and (self.total is None or self.done < self.total):
            self.last = now
            self._print(progress_line(self.label, self.done, self.total, now - self.t0))

    def finish(self) -> None:
        self._print(f"[dart] {self.label}: {self.done} steps done in {_duration(self.clock() - self.t0)}")


class PlainProgress(pl.Callback):
    """A PlainTicker over the evaluation's test batches (Lightning's bar shows nothing off a terminal).
    `clock` and `stream` are for tests."""

    def __init__(self, interval_s: float = 30.0, label: str = "eval", clock=time.monotonic, stream=None):
        self.interval_s = float(interval_s)
        self.label = label
        self.clock = clock
        self.stream = stream
        self.ticker: PlainTicker | None = None

    def on_test_start(self, trainer, pl_module) -> None:
        total = trainer.num_test_batches[0] if trainer.num_test_batches else None
        total = int(total) if isinstance(total, (int, float)) and total != float("inf") else None
        self.ticker = PlainTicker(self.label, total, self.interval_s, self.clock, self.stream)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.ticker.step(batch_idx + 1)

    def on_test_end(self, trainer, pl_module) -> None:
        self.ticker.finish()
