"""Pruning strategies, selected with `strategy=<name>` (conf/strategy/*.yaml, instantiated via `_target_`).

A strategy attaches to a model before evaluation and detaches after it; `summary()` feeds results.json
(sparsity, overhead, drift). `dynamic` says whether its masks depend on the input (then evaluations score
text as decoding, see dart.evals.perplexity)."""
from dart.strategies.base import Dense, Strategy

__all__ = ["Strategy", "Dense"]


def __getattr__(name):  # engine-backed strategies import torch-heavy modules only when asked for
    if name in ("Dart", "StaticPrompt", "Griffin"):
        from dart.strategies import engine_backed

        return getattr(engine_backed, name)
    if name == "Static":
        from dart.strategies import calibrated

        return calibrated.Static
    if name in ("Cats", "Teal", "TealPublished", "Wina"):
        from dart.strategies import per_token

        return getattr(per_token, name)
    raise AttributeError(name)
