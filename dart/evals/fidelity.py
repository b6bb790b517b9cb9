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

from dart.errors import check_integer, choice_error
from dart.evals.base import Evaluator

SEGMENTS = ("same", "switch")


class Fidelity(Evaluator):
    name = "fidelity"

    def __init__(self, documents="wiki", prefix=256, length=256, limit=8, segments=SEGMENTS, forcing="chunked",
                 batch_size=1, batching="consecutive", resamples=2000, seed=0, name=None, **kwargs):
        super().__init__(name=name, limit=limit)
        from dart.evals import batching as batching_rule

        batching_rule.check(batching, batch_size)
        check_integer("eval.resamples", resamples, 1)
        self.batch_size, self.batching, self.resamples, self.seed = batch_size, batching, resamples, int(seed)
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
            j = (i + 1) % len(docs)
            a, b = docs[i], docs[j]
            if "same" in self.segments:  # (segment, document, tokens, documents read)
                self._samples.append(("same", i, a[:need], {i}))
            if "switch" in self.segments:  # the continuation comes from the start of the next document
                self._samples.append(("switch", i, a[: self.prefix] + b[: self.length], {i, j}))
        self.extra["batching"] = {"mode": self.batching, "batch_sizes": [len(b) for b in self.batches()]}
        if ctx.dense_cache is not None:
            ctx.dense_cache.warm(ctx.model, [self.batch_ids(b) for b in self.batches()], self.prefix)

    def batch_ids(self, batch) -> torch.Tensor:
        return torch.tensor([tokens for _, _, tokens, _ in batch], device=self.ctx.device)

    def batches(self):
        """Samples in batches of eval.batch_size rows by eval.batching (dart.evals.batching): consecutive (a
        document's same and switch samples side by side, and the switch row's continuation is the next row's
        prompt), or clean (one segment per batch, no document read twice). Every row has its own masks unless
        strategy.batch_mask=shared."""
        from dart.evals.batching import make_batches

        return make_batches(self._samples, self.batch_size, self.batching, group=lambda s: s[0],
                            documents=lambda s: s[3])

    @torch.no_grad()
    def step(self, batch):
        from dart.evals.decoding import compare_with_dense

        ids = self.batch_ids(batch)
        c = compare_with_dense(self.ctx.model, self.ctx.strategy, ids, self.prefix, self.forcing,
                               self.ctx.dense_cache)
        return [{"segment": segment, "doc": index, "kl": c.kl[i].cpu(), "top1": c.top1[i].cpu(), "nll": c.nll[i].cpu(),
                 "nll_dense": c.nll_dense[i].cpu()} for i, (segment, index, _, _) in enumerate(batch)]

    def finalize(self, outputs):
        from dart.stats import bootstrap_ci

        outputs = [o for batch in outputs for o in batch]
        metrics: dict[str, float | None] = {}
        per_sample = []
        for seg in self.segments:
            rows = [o for o in outputs if o["segment"] == seg]
            metrics[f"{seg}/n"] = float(len(rows))
            if not rows:
                for k in ("kl", "top1", "ppl", "ppl_dense"):
                    metrics[f"{seg}/{k}"] = None
                continue
            cat = lambda key: torch.cat([r[key] for r in rows])  # noqa: E731
            metrics[f"{seg}/kl"] = float(cat("kl").mean())
            metrics[f"{seg}/top1"] = float(cat("top1").mean())
            for key in ("kl", "top1"):  # every sample scores `length` tokens: the token mean is the sample mean
                lo, hi = bootstrap_ci([float(r[key].mean()) for r in rows], resamples=self.resamples, seed=self.seed)
                metrics[f"{seg}/{key}_lo"], metrics[f"{seg}/{key}_hi"] = lo, hi
            metrics[f"{seg}/ppl"] = math.exp(float(cat("nll").mean()))
            metrics[f"{seg}/ppl_dense"] = math.exp(float(cat("nll_dense").mean()))
        for o in outputs:
            per_sample.append({"segment": o["segment"], "doc": o["doc"], "kl": float(o["kl"].mean()),
                               "top1": float(o["top1"].mean())})
        self.extra["samples"] = per_sample
        self.extra["bootstrap"] = {"method": "percentile", "resamples": self.resamples, "seed": self.seed,
                                   "level": 0.95, "unit": "sample"}
        return metrics
