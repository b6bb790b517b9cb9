"""Summarization (docs/method.md section 7): the published prompt "Summarize the following:\\n\\n{doc}\\n\\nSummary:",
the chat template for instruct models, greedy decoding in batches of `batch_size` documents, ROUGE-1/2/L/Lsum with
stemming (rouge-score) and a 95% bootstrap interval over the samples of each data set. Per-sample outputs (prediction,
reference, scores, new tokens, re-traces) go to summaries.jsonl in the run folder.

Truncation to `max_input_tokens` (eval.truncation): `document` (default) cuts the DOCUMENT so the whole prompt fits,
keeping the instruction and the "Summary:" cue; `published` cuts the rendered prompt on the right, as the authors'
code does, which for a long document drops the cue (and an instruct model's assistant header) and leaves the model to
continue the document.

Data sets (hub): cnn_dailymail 3.0.0, xsum, multi_news, gov_report. Offline: `wiki`, the real Wikipedia
article body -> lead section pairs (an offline stand-in, reported under its own name).
"""
from __future__ import annotations

import json
import time

from dart.errors import UnavailableError, choice_error
from dart.evals.base import Evaluator

TEMPLATE = "Summarize the following:\n\n{doc}\n\nSummary:"

# name -> (hub path, config, split, document field, summary field)
HUB = {
    "cnn_dailymail": ("abisee/cnn_dailymail", "3.0.0", "test", "article", "highlights"),
    "xsum": ("EdinburghNLP/xsum", None, "test", "document", "summary"),
    "multi_news": ("alexfabbri/multi_news", None, "test", "document", "summary"),
    "gov_report": ("ccdv/govreport-summarization", None, "test", "report", "summary"),
}
DATASETS = (*HUB, "wiki")
ROUGE = ("rouge1", "rouge2", "rougeL", "rougeLsum")
TRUNCATIONS = ("document", "published")


def load_pairs(name: str, limit: int | None) -> list[dict]:
    if name == "wiki":
        from dart.data.wiki import summarization_pairs

        pairs = summarization_pairs()
    else:
        from dart.hub import load_hub_dataset

        path, config, split, doc, summ = HUB[name]
        ds = load_hub_dataset(path, config, split, f"summarization/{name}")
        n = len(ds) if limit is None else min(limit, len(ds))
        pairs = [{"id": str(i), "document": ds[i][doc], "summary": ds[i][summ]} for i in range(n)]
    return pairs if limit is None else pairs[:limit]


def rouge_scores(predictions: list[str], references: list[str]) -> list[dict[str, float]]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE), use_stemmer=True)
    return [{k: v.fmeasure for k, v in scorer.score(ref, pred).items()} for pred, ref in zip(predictions, references)]


class Summarization(Evaluator):
    name = "summarization"

    def __init__(self, datasets=("wiki",), limit=100, max_input_tokens=1024, max_new_tokens=128, template=TEMPLATE,
                 chat="auto", batch_size=1, truncation="document", resamples=2000, seed=0, name=None, **kwargs):
        super().__init__(name=name, limit=limit)
        for d in datasets:
            if d not in DATASETS:
                raise choice_error("eval.datasets entry", d, DATASETS)
        if "{doc}" not in template:
            raise choice_error("eval.template (must contain {doc})", template, [TEMPLATE])
        if chat not in ("auto", True, False):
            raise choice_error("eval.chat", chat, ("auto", True, False))
        if truncation not in TRUNCATIONS:
            raise choice_error("eval.truncation", truncation, TRUNCATIONS)
        self.truncation, self.resamples, self.seed = truncation, int(resamples), int(seed)
        self.datasets, self.template, self.chat = list(datasets), template, chat
        self.max_input_tokens, self.max_new_tokens, self.batch_size = int(max_input_tokens), int(max_new_tokens), int(batch_size)

    def setup(self, ctx) -> None:
        super().setup(ctx)
        chat = bool(ctx.model_cfg.get("instruct", False)) if self.chat == "auto" and ctx.model_cfg is not None else self.chat is True
        self.use_chat = chat
        from dart.evals.generation import fit_document, render_prompt

        self._items = []
        for name in self.datasets:
            try:
                pairs = load_pairs(name, self.limit)
            except UnavailableError as e:
                self.notes.append(f"not run: {e}")
                continue
            for p in pairs:
                if self.truncation == "published":  # the rendered prompt cut on the right: the cue goes first
                    ids = render_prompt(ctx.tokenizer, self.template.format(doc=p["document"]), chat)[: self.max_input_tokens]
                else:
                    ids = fit_document(ctx.tokenizer, self.template, p["document"], self.max_input_tokens, chat)
                self._items.append({"dataset": name, "id": p["id"], "prompt": ids, "reference": p["summary"]})

    def batches(self):
        return [self._items[i : i + self.batch_size] for i in range(0, len(self._items), self.batch_size)]

    def step(self, batch):
        from dart.evals.generation import greedy

        log_before = len(self.ctx.strategy.drift_log()[1])
        t0 = time.perf_counter()
        outs = greedy(self.ctx.model, self.ctx.tokenizer, [b["prompt"] for b in batch], self.max_new_tokens, self.ctx.device)
        seconds = time.perf_counter() - t0  # the batch's generation, prefill included (outs are host lists: synced)
        new = self.ctx.strategy.drift_log()[1][log_before:]  # one generate call: one request, its rows 0..B-1
        texts = [self.ctx.tokenizer.decode(o, skip_special_tokens=True).strip() for o in outs]
        return [dict(b, prediction=t, new_tokens=len(o), triggers=sum(int(e.get("row", 0)) == i for e in new),
                     prompt_tokens=len(b["prompt"]), batch_seconds=seconds if i == 0 else 0.0)
                for i, (b, t, o) in enumerate(zip(batch, texts, outs))]

    def finalize(self, outputs):
        from dart.stats import bootstrap_ci

        rows = [r for batch in outputs for r in batch]
        metrics: dict[str, float | None] = {}
        path = self.ctx.run_dir / "summaries.jsonl"
        with open(path, "w") as f:
            for name in self.datasets:
                mine = [r for r in rows if r["dataset"] == name]
                if not mine:
                    metrics.update({f"{name}/{k}": None for k in ROUGE})
                    continue
                scores = rouge_scores([r["prediction"] for r in mine], [r["reference"] for r in mine])
                for k in ROUGE:
                    vals = [s[k] for s in scores]
                    metrics[f"{name}/{k}"] = sum(vals) / len(vals)
                    metrics[f"{name}/{k}_lo"], metrics[f"{name}/{k}_hi"] = bootstrap_ci(vals, resamples=self.resamples,
                                                                                       seed=self.seed)
                metrics[f"{name}/n"] = float(len(mine))
                metrics[f"{name}/retraces"] = sum(r["triggers"] for r in mine) / len(mine)
                for r, s in zip(mine, scores):
                    f.write(json.dumps({"dataset": name, "id": r["id"], "prediction": r["prediction"],
                                        "reference": r["reference"], "new_tokens": r["new_tokens"],
                                        "triggers": r["triggers"], "prompt_tokens": r["prompt_tokens"],
                                        **s}) + "\n")
        seconds = sum(r["batch_seconds"] for r in rows)
        if rows and seconds > 0:  # the job's own generation speed: new tokens over the generate calls' wall time
            metrics["gen_tok_s"] = sum(r["new_tokens"] for r in rows) / seconds
        self.extra["per_sample"] = path.name
        self.extra["chat_template"] = self.use_chat
        self.extra["truncation"] = self.truncation
        return metrics
