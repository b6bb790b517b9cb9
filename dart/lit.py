"""The Lightning side: inference-only evaluation as `Trainer.test`, with the pruning strategy as a Callback.

EvalModule wraps the Hugging Face model and an Evaluator; each evaluator batch is one test step (so long work
shows Lightning's progress bar) and `on_test_epoch_end` aggregates the metrics. StrategyCallback attaches the
strategy's hooks when testing starts and removes them when it ends."""
from __future__ import annotations

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
