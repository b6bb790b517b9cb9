"""The knowledge-drift study (method.md section 7): two-topic prompts, long greedy generation, the dense
output as the reference; ROUGE-L, BLEU and token agreement against dense; the detector's triggers per sample;
a plot of the window cosine over time per sample. `eval=drift_demo` is one prompt with the text printed and
the trigger points marked in it.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from dart.evals.base import Evaluator

PROMPTS = Path(__file__).parent / "prompts" / "drift.yaml"
MARK = " ⟦re-trace⟧ "


def token_agreement(a: list[int], b: list[int]) -> tuple[float, int]:
    """(fraction of positions with the same token over the longer length, index of the first difference)."""
    n = max(len(a), len(b))
    same = sum(x == y for x, y in zip(a, b))
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return (same / n if n else 1.0), first


def mark_triggers(tokenizer, tokens: list[int], trigger_steps: list[int]) -> str:
    """Decoded text with a marker where each re-trace starts (after the token produced at the trigger step)."""
    pieces, last = [], 0
    for s in sorted(trigger_steps):
        cut = min(s + 1, len(tokens))
        pieces.append(tokenizer.decode(tokens[last:cut], skip_special_tokens=True))
        pieces.append(MARK)
        last = cut
    pieces.append(tokenizer.decode(tokens[last:], skip_special_tokens=True))
    return "".join(pieces)


class Drift(Evaluator):
    name = "drift"

    def __init__(self, limit=4, max_new_tokens=500, prompts_file=None, chat="auto", reference=True,
                 print_text=False, name=None, **kwargs):
        super().__init__(name=name, limit=limit)
        spec = yaml.safe_load(Path(prompts_file or PROMPTS).read_text())
        self.prompts = [spec["template"].format(**p) for p in spec["pairs"]]
        self.max_new_tokens, self.chat, self.reference, self.print_text = int(max_new_tokens), chat, bool(reference), bool(print_text)

    def setup(self, ctx) -> None:
        super().setup(ctx)
        from dart.evals.generation import render_prompt

        chat = bool(ctx.model_cfg.get("instruct", False)) if self.chat == "auto" and ctx.model_cfg is not None else self.chat is True
        n = min(int(self.limit or len(self.prompts)), len(self.prompts))
        self._items = [(i, p, render_prompt(ctx.tokenizer, p, chat)) for i, p in enumerate(self.prompts[:n])]

    def batches(self):
        return self._items

    def step(self, item):
        from dart.evals.generation import greedy

        index, text, prompt = item
        model, tok, strategy = self.ctx.model, self.ctx.tokenizer, self.ctx.strategy
        dense = None
        if self.reference:
            with strategy.paused():
                dense = greedy(model, tok, [prompt], self.max_new_tokens, self.ctx.device)[0]
        windows0, triggers0 = (len(x) for x in strategy.drift_log())
        out = greedy(model, tok, [prompt], self.max_new_tokens, self.ctx.device)[0]
        windows, triggers = (x[n:] for x, n in zip(strategy.drift_log(), (windows0, triggers0)))
        return {"index": index, "prompt": text, "tokens": out, "dense": dense, "windows": list(windows),
                "triggers": list(triggers)}

    def finalize(self, outputs):
        import sacrebleu

        from dart.evals.plots import plot_drift_trace
        from dart.evals.summarization import rouge_scores

        tok = self.ctx.tokenizer
        run_dir = self.ctx.run_dir
        rows, rouge_l, bleu, agree, first_diff = [], [], [], [], []
        for o in outputs:
            text = tok.decode(o["tokens"], skip_special_tokens=True)
            row = {"index": o["index"], "prompt": o["prompt"], "text": text,
                   "text_marked": mark_triggers(tok, o["tokens"], [t["step"] for t in o["triggers"]]),
                   "new_tokens": len(o["tokens"]), "triggers": o["triggers"], "windows": o["windows"]}
            if o["dense"] is not None:
                ref = tok.decode(o["dense"], skip_special_tokens=True)
                row["dense_text"] = ref
                row["rougeL"] = rouge_scores([text], [ref])[0]["rougeL"]
                row["bleu"] = sacrebleu.sentence_bleu(text, [ref]).score / 100.0
                row["token_agreement"], row["first_difference"] = token_agreement(o["tokens"], o["dense"])
                rouge_l.append(row["rougeL"]); bleu.append(row["bleu"])
                agree.append(row["token_agreement"]); first_diff.append(row["first_difference"])
            if o["windows"]:
                plot = plot_drift_trace(o["windows"], o["triggers"], run_dir / "drift_plots" / f"sample{o['index']:02d}.png",
                                        title=o["prompt"][:110])
                row["plot"] = str(plot.relative_to(run_dir))
            rows.append(row)
            if self.print_text:
                print(f"\n--- prompt {o['index']}: {o['prompt']}\n{row['text_marked']}\n"
                      f"(re-traces: {len(o['triggers'])}; plot: {row.get('plot', 'none')})\n", flush=True)
        with open(run_dir / "drift_samples.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        self.extra["per_sample"] = "drift_samples.jsonl"
        return {"rougeL_vs_dense": mean(rouge_l), "bleu_vs_dense": mean(bleu), "token_agreement": mean(agree),
                "first_difference": mean(first_diff), "triggers_per_sample": mean([len(r["triggers"]) for r in rows]),
                "new_tokens": mean([r["new_tokens"] for r in rows])}
