"""The Python API for practitioners: prune a Hugging Face model in place, with the command line's defaults.

    import dart
    with dart.prune(model, "dart", tokenizer=tok, sparsity=0.5) as handle:
        out = model.generate(**inputs, max_new_tokens=200)      # decoding runs the pruned (compacted) FFNs
        print(handle.summary()["sparsity"])                      # what the run actually skipped
    # here the model is restored, bit for bit

Inside the block, decode steps on a CPU (batch <= 8) run through the decode kernels (dart.kernels: the attention
projections, the LM head and the pruned FFNs, per-token methods on their sparse-input kernels); `kernels=False` keeps
torch's own products.

Any strategy of conf/strategy/ (dart, dart_published, dart_plus, static_prompt, griffin, static, cats, dense) and any
of its knobs (`masking_step=5`, `drift={"window": 10}` or `**{"drift.window": 10}`) are accepted: the strategy is
composed from the same YAML as `python -m dart.run strategy=<name> sparsity=... ranking=...` (dart.compose), so the
spec is the run's.
"""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def prune(model, strategy: str = "dart", tokenizer=None, sparsity: float | None = None, ranking: str | None = None,
          kernels: bool = True, **knobs):
    """Attach `strategy` to `model` for the block (the tokenizer is needed by strategies that calibrate: static, cats,
    prior_mix > 0); yields the strategy (its `summary()` has the sparsity, overhead and drift figures so far)."""
    from dart.compose import build_strategy

    from dart import kernels as decode_kernels

    handle = build_strategy(strategy, sparsity=sparsity, ranking=ranking, **knobs)
    handle.attach(model, tokenizer)
    try:
        if kernels:
            with decode_kernels.decoding(model):
                yield handle
        else:
            yield handle
    finally:
        handle.detach()
