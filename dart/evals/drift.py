"""The knowledge-drift study (docs/method.md section 7): two-topic prompts, long greedy generation, the dense
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


PROMPTS_EXPECTED = ("expected a YAML file with `template` (a text with {a} and {b}) and `pairs` (a list of "
                    "{a: ..., b: ...}), as dart/evals/prompts/drift.yaml")


def load_prompts(prompts_file=None) -> list[str]:
    """The two-topic prompts of a prompts file (default: the shipped one). A missing, empty or malformed file, or a
    prompt that comes out empty, is one ConfigError naming the file and what is expected."""
    from dart.errors import ConfigError

    if prompts_file is None:
        path, shown = PROMPTS, str(PROMPTS)
    else:
        path, shown = Path(str(prompts_file)).expanduser(), f"eval.prompts_file={str(prompts_file)!r}"
    if not path.is_file():
        raise ConfigError(f"{shown} {'is a folder' if path.is_dir() else 'does not exist'}; {PROMPTS_EXPECTED}")
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{shown} cannot be read ({e}); {PROMPTS_EXPECTED}") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{shown} is not valid YAML{at} ({getattr(e, 'problem', None) or type(e).__name__}); "
                          f"{PROMPTS_EXPECTED}") from None
    if spec is None:
        raise ConfigError(f"{shown} is empty; {PROMPTS_EXPECTED}")
    if not isinstance(spec, dict) or not isinstance(spec.get("template"), str) or not isinstance(spec.get("pairs"), list):
        raise ConfigError(f"{shown} has no `template` text and `pairs` list; {PROMPTS_EXPECTED}")
    if not spec["pairs"]:
        raise ConfigError(f"{shown} has an empty `pairs` list; {PROMPTS_EXPECTED}")
    prompts = []
    for i, pair in enumerate(spec["pairs"]):
        if not isinstance(pair, dict):
            raise ConfigError(f"{shown}: pairs[{i}] is {pair!r}, not a mapping like {{a: ..., b: ...}}; {PROMPTS_EXPECTED}")
        try:
            text = spec["template"].format(**pair)
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"{shown}: the template does not fill from pairs[{i}] ({type(e).__name__}: {e}); "
                              f"{PROMPTS_EXPECTED}") from None
        if not text.strip() or any(v is None or (isinstance(v, str) and not v.strip()) for v in pair.values()):
            raise ConfigError(f"{shown}: pairs[{i}] gives an empty prompt text ({pair!r}); every prompt and topic must "
                              "be non-empty")
        prompts.append(text)
    return prompts


class Drift(Evaluator):
    name = "drift"

    def __init__(self, limit=4, max_new_tokens=500, prompts_file=None, chat="auto", reference=True,
                 print_text=False, batch_size=1, name=None, **kwargs):
        super().__init__(name=name, limit=limit)
        from dart.errors import check_integer

        check_integer("eval.batch_size", batch_size, 1)
        self.batch_size = batch_size
        self.prompts = load_prompts(prompts_file)
        self.max_new_tokens, self.chat, self.reference, self.print_text = int(max_new_tokens), chat, bool(reference), bool(print_text)

    def setup(self, ctx) -> None:
        super().setup(ctx)
        from dart.evals.generation import render_prompt

        chat = bool(ctx.model_cfg.get("instruct", False)) if self.chat == "auto" and ctx.model_cfg is not None else self.chat is True
        n = min(int(self.limit or len(self.prompts)), len(self.prompts))
        self._items = [(i, p, render_prompt(ctx.tokenizer, p, chat)) for i, p in enumerate(self.prompts[:n])]

    def batches(self):
        """The prompts in batches of eval.batch_size (one generate call each: left-padded, every row its own masks
        and detector)."""
        return [self._items[i : i + self.batch_size] for i in range(0, len(self._items), self.batch_size)]

    def step(self, batch):
        from dart.evals.generation import greedy

        model, tok, strategy = self.ctx.model, self.ctx.tokenizer, self.ctx.strategy
        prompts = [prompt for _, _, prompt in batch]
        dense = [None] * len(batch)
        if self.reference:
            with strategy.paused():
                dense = greedy(model, tok, prompts, self.max_new_tokens, self.ctx.device)
        windows0, triggers0 = (len(x) for x in strategy.drift_log())
        outs = greedy(model, tok, prompts, self.max_new_tokens, self.ctx.device)
        windows, triggers = (x[n:] for x, n in zip(strategy.drift_log(), (windows0, triggers0)))  # one request, rows 0..B-1
        return [{"index": index, "prompt": text, "tokens": out, "dense": ref,
                 "windows": [dict(e, row=0) for e in windows if int(e.get("row", 0)) == i],
                 "triggers": [dict(e, row=0) for e in triggers if int(e.get("row", 0)) == i]}
                for i, ((index, text, _), out, ref) in enumerate(zip(batch, outs, dense))]

    def finalize(self, outputs):
        outputs = [o for batch in outputs for o in batch]
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
        from dart.stats import bootstrap_ci

        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        self.extra["per_sample"] = "drift_samples.jsonl"
        out = {"rougeL_vs_dense": mean(rouge_l), "bleu_vs_dense": mean(bleu), "token_agreement": mean(agree),
               "first_difference": mean(first_diff), "triggers_per_sample": mean([len(r["triggers"]) for r in rows]),
               "new_tokens": mean([r["new_tokens"] for r in rows])}
        for key, vals in (("rougeL_vs_dense", rouge_l), ("bleu_vs_dense", bleu), ("token_agreement", agree),
                          ("triggers_per_sample", [len(r["triggers"]) for r in rows])):
            ci = bootstrap_ci(vals) if vals else None  # a 95% percentile bootstrap over the samples
            out[f"{key}_lo"], out[f"{key}_hi"] = ci if ci else (None, None)
        out["n"] = float(len(rows))
        return out
