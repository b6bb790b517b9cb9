"""dart: inference-time, context-dependent pruning of LLM feed-forward neurons (DART and its baselines).

    with dart.prune(model, "dart", sparsity=0.5) as handle: model.generate(...)     # dart.api
    dart.build_strategy("dart_published", sparsity=0.7)                             # dart.compose

Imports are lazy on purpose: `python -m dart.run --help` and table regeneration must not pay for torch,
transformers or Lightning.
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name == "prune":
        from dart.api import prune

        return prune
    if name == "build_strategy":
        from dart.compose import build_strategy

        return build_strategy
    raise AttributeError(name)
