"""Summarization (docs/method.md section 7): the published prompt "Summarize the following:\\n\\n{doc}\\n\\nSummary:",
the document truncated so the prompt fits `max_input_tokens` (the instruction and the cue are kept, unlike the
published code), the chat template for instruct models, greedy decoding, ROUGE-1/2/L/Lsum with stemming
(rouge-score). Per-sample outputs go to summaries.jsonl in the run folder.

Data sets (hub): cnn_dailymail 3.0.0, xsum, multi_news, gov_report. Offline: `wiki`, the real Wikipedia
article body -> lead section pairs (an offline stand-in, reported under its own name).
"""
from __future__ import annotations

import json

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
                 chat="auto", batch_size=1, name=None, **kwargs):
        super().__init__(name=name, limit=limit)
        for d in datasets:
            if d not in DATASETS:
                raise choice_error("eval.datasets entry", d, DATASETS)
        if "{doc}" not in template:
            raise choice_error("eval.template (must contain {doc})", template, [TEMPLATE])
        if chat not in ("auto", True, False):
            raise choice_error("eval.chat", chat, ("auto", True, False))
        self.datasets, self.template, self.chat = list(datasets), template, chat
        self.max_input_tokens, self.max_new_tokens, self.batch_size = int(max_input_tokens), int(max_new_tokens), int(batch_size)

    def setup(self, ctx) -> None:
        super().setup(ctx)
        chat = bool(ctx.model_cfg.get("instruct", False)) if self.chat == "auto" and ctx.model_cfg is not None else self.chat is True
        self.use_chat = chat
        from dart.evals.generation import fit_document

        self._items = []
        for name in self.datasets:
            try:
                pairs = load_pairs(name, self.limit)
            except UnavailableError as e:
                self.notes.append(f"not run: {e}")
                continue
            for p in pairs:
                ids = fit_document(ctx.tokenizer, self.template, p["document"], self.max_input_tokens, chat)
                self._items.append({"dataset": name, "id": p["id"], "prompt": ids, "reference": p["summary"]})

    def batches(self):
        return [self._items[i : i + self.batch_size] for i in range(0, len(self._items), self.batch_size)]

    def step(self, batch):
        from dart.evals.generation import greedy

        log_before = len(self.ctx.strategy.drift_log()[1])
        outs = greedy(self.ctx.model, self.ctx.tokenizer, [b["prompt"] for b in batch], self.max_new_tokens, self.ctx.device)
        triggers = len(self.ctx.strategy.drift_log()[1]) - log_before
        texts = [self.ctx.tokenizer.decode(o, skip_special_tokens=True).strip() for o in outs]
        return [dict(b, prediction=t, new_tokens=len(o), triggers=triggers if len(batch) == 1 else None)
                for b, t, o in zip(batch, texts, outs)]

    def finalize(self, outputs):
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
                    metrics[f"{name}/{k}"] = sum(s[k] for s in scores) / len(scores)
                metrics[f"{name}/n"] = float(len(mine))
                for r, s in zip(mine, scores):
                    f.write(json.dumps({"dataset": name, "id": r["id"], "prediction": r["prediction"],
                                        "reference": r["reference"], "new_tokens": r["new_tokens"],
                                        "triggers": r["triggers"], **s}) + "\n")
        self.extra["per_sample"] = path.name
        self.extra["chat_template"] = self.use_chat
        return metrics
