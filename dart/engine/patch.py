"""Attaching an engine to a Hugging Face model and taking it off again: every decoder layer's FFN module replaced by
the engine's (dart.engine.ffn.PrunableFFN, dart.strategies.per_token_engine.PerTokenFFN), forward hooks registered, and on detach
both put back (the original FFN modules, whose parameters the engine shares). Used by the controller and by CATS."""
from __future__ import annotations

import contextlib
from typing import Callable

from torch import nn

from dart.engine.adapters import restore_ffn


PER_TOKEN = "_dart_per_token"  # the attribute under which a per-token engine is attached to its model


@contextlib.contextmanager
def prompt_phase(model):
    """The forwards inside run a request's prompt (its prefill, in one forward or as a shared head and tails): a
    per-token method attached to `model` runs them dense, as it runs a prefill (dart.strategies.per_token)."""
    engine = getattr(model, PER_TOKEN, None)
    if engine is None:
        yield
        return
    before, engine.in_prompt = engine.in_prompt, True
    try:
        yield
    finally:
        engine.in_prompt = before


class Patch:
    def __init__(self, model: nn.Module, adapter, layers: list[nn.Module], ffns: list[nn.Module]):
        self.model, self.adapter, self.layers, self.ffns = model, adapter, layers, ffns
        self.hooks: list = []
        self.is_paused = False

    def apply(self, begin: Callable | None = None, end: Callable | None = None) -> None:
        """Put the engine's FFNs in, with `begin` / `end` as the model's forward pre-hook / hook (kwargs included)."""
        for layer, ffn in zip(self.layers, self.ffns):
            self.adapter.set_ffn(layer, ffn)
        if begin is not None:
            self.hooks.append(self.model.register_forward_pre_hook(begin, with_kwargs=True))
        if end is not None:
            self.hooks.append(self.model.register_forward_hook(end, with_kwargs=True))

    def hook(self, handle) -> None:
        """Keep a hook handle to remove on undo."""
        self.hooks.append(handle)

    def undo(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks.clear()
        for layer, ffn in zip(self.layers, self.ffns):
            restore_ffn(self.adapter, layer, ffn.original)

    @contextlib.contextmanager
    def paused(self):
        """Run the model dense inside the block (no tracing, masks, thresholds or counting): the dense reference."""
        before, self.is_paused = self.is_paused, True
        try:
            yield
        finally:
            self.is_paused = before
