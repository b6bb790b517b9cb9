"""The paper's published numbers (arXiv 2601.22632, as gathered in docs/method.md), placed beside ours where a
cell matches. Only numbers the paper states are here; nothing is interpolated or read off a plot by us.

- Summarization figure: Llama-3.2-3B-Instruct at 50% FFN sparsity, ROUGE-L, dense / static mask / DART.
  "Static mask" = the prompt mask never re-traced = our `static_prompt`.
- Ten benchmarks: the paper's text states one number, DART's largest gain over GRIFFIN: +14.5 accuracy points
  on Llama-3.1-8B at 70% FFN sparsity (which benchmark is not stated). No per-cell accuracies are public here.
"""
from __future__ import annotations

PAPER = "DART (arXiv 2601.22632)"

# (model, data set) -> {(strategy, sparsity): ROUGE-L}
SUMMARIZATION_ROUGE_L: dict[tuple[str, str], dict[tuple[str, float], float]] = {
    ("llama32_3b_instruct", "cnn_dailymail"): {("dense", 0.0): 0.140, ("static_prompt", 0.5): 0.046, ("dart", 0.5): 0.122},
    ("llama32_3b_instruct", "multi_news"): {("dense", 0.0): 0.118, ("static_prompt", 0.5): 0.063, ("dart", 0.5): 0.099},
    ("llama32_3b_instruct", "gov_report"): {("dense", 0.0): 0.172, ("static_prompt", 0.5): 0.123, ("dart", 0.5): 0.155},
}
# the columns the paper's summarization figure has, in its order, with our label for each
SUMMARIZATION_METHODS: tuple[tuple[tuple[str, float], str], ...] = (
    (("dense", 0.0), "Dense"), (("static_prompt", 0.5), "Static mask 50%"), (("dart", 0.5), "DART 50%"))

# (model, sparsity) -> the largest DART - GRIFFIN accuracy gain over the ten benchmarks, in points
TEN_MAX_GAIN_OVER_GRIFFIN: dict[tuple[str, float], float] = {("llama3_8b", 0.7): 14.5}


def summarization_rouge_l(model: str, dataset: str, strategy: str, sparsity: float | None) -> float | None:
    cells = SUMMARIZATION_ROUGE_L.get((model, dataset), {})
    key = (strategy, 0.0 if strategy == "dense" else round(float(sparsity or 0.0), 4))
    return cells.get(key)


def has_summarization(model: str) -> bool:
    return any(m == model for m, _ in SUMMARIZATION_ROUGE_L)
