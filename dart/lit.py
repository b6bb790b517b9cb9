"""The Lightning side: inference-only evaluation as `Trainer.test`, with the pruning strategy as a Callback.

EvalModule wraps the Hugging Face model and an Evaluator; each evaluator batch is one test step (so long work
shows Lightning's progress bar) and `on_test_epoch_end` aggregates the metrics. StrategyCallback attaches the
strategy's hooks when testing starts and removes them when it ends. PlainProgress prints a plain progress line
every so often when stdout is not a terminal (nohup, SLURM), where Lightning's bar shows nothing until the end."""
from __future__ import annotations

import time

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from dart.evals.base import EvalContext, Evaluator
from dart.progress import PlainTicker


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
