"""Attaching an engine to a Hugging Face model and taking it off again: every decoder layer's FFN module replaced by
the engine's (dart.engine.ffn.PrunableFFN, dart.strategies.per_token_engine.PerTokenFFN), forward hooks registered, and on detach
both put back (the original FFN modules, whose parameters the engine shares). Used by the controller and by the
per-token engine. The one registry of which engine is attached to which model is here (`attached`): the model
object itself is never written to."""
from __future__ import annotations

import contextlib
import weakref
from typing import Callable

from torch import nn

from dart.engine.adapters import restore_ffn

KINDS = ("controller", "per_token")  # the engines a model can carry (at most one of each)
_ATTACHED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def attached(model, kind: str):
    """The engine of `kind` (KINDS) attached to `model`, None when there is none."""
    return _ATTACHED.get(model, {}).get(kind)


@contextlib.contextmanager
def prompt_phase(model):
    """The forwards inside run a request's prompt (its prefill, in one forward or as a shared head and tails): a
    per-token method attached to `model` runs them dense, as it runs a prefill (dart.strategies.per_token)."""
    engine = attached(model, "per_token")
    if engine is None:
        yield
        return
    before, engine.in_prompt = engine.in_prompt, True
    try:
        yield
    finally:
        engine.in_prompt = before


class Patch:
    def __init__(self, model: nn.Module, adapter, layers: list[nn.Module], ffns: list[nn.Module], kind: str, owner):
        if kind not in KINDS:
            raise ValueError(f"engine kind {kind!r}; allowed: {', '.join(KINDS)}")
        self.model, self.adapter, self.layers, self.ffns = model, adapter, layers, ffns
        self.kind, self.owner = kind, weakref.ref(owner)
        self.hooks: list = []
        self.is_paused = False

    def apply(self, begin: Callable | None = None, end: Callable | None = None) -> None:
        """Put the engine's FFNs in, with `begin` / `end` as the model's forward pre-hook / hook (kwargs included),
        and register the engine as the model's `kind` (attached)."""
        _ATTACHED.setdefault(self.model, {})[self.kind] = self.owner()
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
        engines = _ATTACHED.get(self.model, {})
        if engines.get(self.kind) is self.owner():
            del engines[self.kind]
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
