"""Fidelity to the dense model on real text, under teacher forcing (the metric that separates methods on small
models, whose benchmark accuracy sits at chance).

Each sample is a prefix of `prefix` tokens from one real document followed by `length` tokens of either the
same document (segment `same`) or another document (segment `switch`: the topic changes under the model).
The dense model scores it in one forward (strategy paused); the pruned model scores it as decoding: the prefix
is the prompt, every continuation token teacher-forced (dart.engine.forcing, `forcing` chunked or reference), so
masks and the drift detector act as in generation. Per continuation token: KL(dense || pruned), top-1 agreement,
and the NLL of the true token (dart.evals.decoding.compare_with_dense, shared with eval=switch).
"""
from __future__ import annotations

import math

import torch

from dart.errors import choice_error
from dart.evals.base import Evaluator

SEGMENTS = ("same", "switch")


class Fidelity(Evaluator):
    name = "fidelity"

    def __init__(self, documents="wiki", prefix=256, length=256, limit=8, segments=SEGMENTS, forcing="chunked",
                 batch_size=1, name=None, **kwargs):
        super().__init__(name=name, limit=limit)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            from dart.errors import ConfigError

            raise ConfigError(f"eval.batch_size={batch_size!r} must be an integer >= 1")
        self.batch_size = batch_size
        from dart.engine.forcing import MODES as FORCING

        if forcing not in FORCING:
            raise choice_error("eval.forcing", forcing, FORCING)
        self.forcing = forcing
        from dart.data.texts import DOC_SOURCES

        if documents not in DOC_SOURCES:
            raise choice_error("eval.documents", documents, DOC_SOURCES)
        for s in segments:
            if s not in SEGMENTS:
                raise choice_error("eval.segments entry", s, SEGMENTS)
        self.documents, self.prefix, self.length, self.segments = documents, int(prefix), int(length), list(segments)

    def setup(self, ctx) -> None:
        super().setup(ctx)
        from dart.data.texts import load_documents

        tok = ctx.tokenizer
        need = self.prefix + self.length
        docs = [tok(d, add_special_tokens=False)["input_ids"] for d in load_documents(self.documents)]
        docs = [d for d in docs if len(d) >= need]
        if len(docs) < 2:
            raise choice_error("eval.prefix + eval.length (too long for the documents)", need, ["shorter segments"])
        n = min(int(self.limit or len(docs)), len(docs))
        self._samples = []
        for i in range(n):
            a, b = docs[i], docs[(i + 1) % len(docs)]
            if "same" in self.segments:
                self._samples.append(("same", i, a[:need]))
            if "switch" in self.segments:  # the continuation comes from the start of the next document
                self._samples.append(("switch", i, a[: self.prefix] + b[: self.length]))

    def batches(self):
        """Samples in batches of eval.batch_size rows (every row its own masks unless strategy.batch_mask=shared)."""
        return [self._samples[i : i + self.batch_size] for i in range(0, len(self._samples), self.batch_size)]

    @torch.no_grad()
    def step(self, batch):
        from dart.evals.decoding import compare_with_dense

        ids = torch.tensor([tokens for _, _, tokens in batch], device=self.ctx.device)
        c = compare_with_dense(self.ctx.model, self.ctx.strategy, ids, self.prefix, self.forcing)
        return [{"segment": segment, "doc": index, "kl": c.kl[i].cpu(), "top1": c.top1[i].cpu(), "nll": c.nll[i].cpu(),
                 "nll_dense": c.nll_dense[i].cpu()} for i, (segment, index, _) in enumerate(batch)]

    def finalize(self, outputs):
        outputs = [o for batch in outputs for o in batch]
        metrics: dict[str, float | None] = {}
        per_sample = []
        for seg in self.segments:
            rows = [o for o in outputs if o["segment"] == seg]
            if not rows:
                for k in ("kl", "top1", "ppl", "ppl_dense"):
                    metrics[f"{seg}/{k}"] = None
                continue
            cat = lambda key: torch.cat([r[key] for r in rows])  # noqa: E731
            metrics[f"{seg}/kl"] = float(cat("kl").mean())
            metrics[f"{seg}/top1"] = float(cat("top1").mean())
            metrics[f"{seg}/ppl"] = math.exp(float(cat("nll").mean()))
            metrics[f"{seg}/ppl_dense"] = math.exp(float(cat("nll_dense").mean()))
        for o in outputs:
            per_sample.append({"segment": o["segment"], "doc": o["doc"], "kl": float(o["kl"].mean()),
                               "top1": float(o["top1"].mean())})
        self.extra["samples"] = per_sample
        return metrics
