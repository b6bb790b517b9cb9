"""What one bench row runs: a method named as a strategy (conf/strategy) or a variant (conf/variant, e.g.
static_prompt_prior: a strategy with knobs), checked to be per-token (`sparse_methods`) or whole-sequence
(`compact_methods`) before the model loads, and built at the bench's sparsity for its mode (dart.bench.decode)."""
from __future__ import annotations

from dart.compose import build_strategy, options
from dart.errors import choice_error


def bench_strategy(mode: str, sparsity: float, method: str = "static_prompt"):
    """The strategy one row runs: `method` is a strategy (conf/strategy) or a variant (conf/variant, e.g.
    static_prompt_prior: a strategy with knobs), at the bench's sparsity."""
    if mode == "dense":
        return None
    variant = () if method in options("strategy") else (f"+variant={method}",)
    if variant and method not in options("variant"):
        raise choice_error("bench method", method, sorted(set(options("strategy")) | set(options("variant"))))
    base = _variant_strategy(method) if variant else method
    if mode == "sparse":  # a per-token method (the prompt dense, every decode step its own inputs)
        return build_strategy(base, sparsity=sparsity, overrides=variant)
    # compacted: a single sequence's kept prefix, or a batch's union (forced: the bench measures the union even
    # where execution=auto would run the batch masked, and reports whether it would); shared: one kept set for the
    # batch (strategy.batch_mask=shared), compacted once, no per-row mask inside it. static_prompt builds its mask at
    # the first decode step (masking_step 1); another whole-sequence method runs as its config says (DART re-traces).
    execution = "masked" if mode == "masked" else "compact"
    if method == "static_prompt":
        return build_strategy("static_prompt", sparsity=sparsity, execution=execution, masking_step=1,
                              batch_mask="shared" if mode == "shared" else "per_row")
    return build_strategy(base, sparsity=sparsity, overrides=variant, execution=execution)


def check_method(key: str, method: str, per_token: bool) -> None:
    """A bench method is a strategy or a variant whose strategy is per-token (sparse_methods) or whole-sequence
    (compact_methods); a clear error otherwise."""
    import importlib

    from dart.errors import ConfigError
    from dart.strategies.per_token import PerTokenStrategy

    known = sorted(set(options("strategy")) | set(options("variant")))
    if method not in known:
        raise choice_error(key, method, known)
    from dart.compose import compose

    target = str(compose([f"strategy={method}"] if method in options("strategy") else [f"+variant={method}"]).strategy._target_)
    module, _, name = target.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    if (isinstance(cls, type) and issubclass(cls, PerTokenStrategy)) != per_token or method == "dense":
        kind = "a per-token method (cats, teal, teal_published, wina or a variant of one)" if per_token else \
            "a whole-sequence method (static_prompt, griffin, dart, dart_published, ... or a variant of one)"
        raise ConfigError(f"{key}: {method} is not {kind}")


def _variant_strategy(variant: str) -> str:
    """The strategy a variant selects."""
    from dart.compose import compose

    return str(compose([f"+variant={variant}"]).strategy.name)
