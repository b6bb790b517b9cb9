"""Perplexity on real text.

Protocols:
- `sliding` (as published): windows of `window` tokens every `stride` tokens; each window scores only the
  tokens not scored before (the first window all but its first token), the rest is context.
- `chunks` (Wanda/SparseGPT): non-overlapping windows of `window` tokens (2048 there) over the joined text.
Mode (how a window is run):
- `prefill`: one forward per window (dense and input-independent masks: dense, static).
- `decode`: the window's unscored context (at least `prime` tokens) is the prompt; every later token is
  teacher-forced decoding, so a dynamic strategy traces the prompt and prunes what follows (re-tracing where its
  detector fires) as it would when generating; run by dart.engine.forcing (`forcing`: `chunked`, a few forwards
  per window, exact; `reference`, one forward per token).
- `auto`: decode for dynamic strategies, prefill otherwise. Both modes score the same tokens.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from dart.errors import ConfigError, choice_error
from dart.evals.base import Evaluator

PROTOCOLS = ("sliding", "chunks")
MODES = ("auto", "prefill", "decode")


@dataclasses.dataclass
class Window:
    text: str
    index: int
    ids: torch.Tensor  # (T,)
    n_scored: int  # the last n_scored tokens are scored


def check_windows(protocol: str, window: int, stride: int) -> None:
    """A window scores at least one token, and sliding windows overlap: with stride >= window the first token
    of each window would have no context inside it, so it could not be scored (it would be skipped)."""
    if protocol not in PROTOCOLS:
        raise choice_error("eval.protocol", protocol, PROTOCOLS)
    if int(window) < 2:
        raise ConfigError(f"eval.window={window!r} must be >= 2 (a window scores window - 1 tokens at most)")
    if protocol == "sliding" and not 1 <= int(stride) < int(window):
        raise ConfigError(f"eval.stride={stride!r} must be in [1, eval.window) = [1, {window}) for protocol=sliding "
                          "(use protocol=chunks for non-overlapping windows)")


def windows(ids: torch.Tensor, protocol: str, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_scored) of every window over a 1-D token sequence."""
    check_windows(protocol, window, stride)
    n = ids.numel()
    out = []
    if protocol == "chunks":
        for begin in range(0, n - window + 1, window):
            out.append((begin, begin + window, window - 1))
        return out
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        n_scored = end - prev_end if prev_end else end - begin - 1
        if end - begin >= 2 and n_scored > 0:
            out.append((begin, end, n_scored))
        prev_end = end
        if end == n:
            break
    return out


class Perplexity(Evaluator):
    name = "perplexity"

    def __init__(self, texts=("news",), protocol="sliding", window=1024, stride=256, limit=None, mode="auto",
                 prime=64, batch_size=1, forcing="chunked", name=None, **kwargs):
        super().__init__(name=name, limit=limit)
        check_windows(protocol, window, stride)
        if mode not in MODES:
            raise choice_error("eval.mode", mode, MODES)
        from dart.engine.forcing import MODES as FORCING

        if forcing not in FORCING:
            raise choice_error("eval.forcing", forcing, FORCING)
        self.forcing = forcing
        from dart.data.texts import TEXT_SOURCES

        for t in texts:
            if t not in TEXT_SOURCES:
                raise choice_error("eval.texts entry", t, TEXT_SOURCES)
        self.texts, self.protocol, self.mode = list(texts), protocol, mode
        self.window, self.stride, self.prime, self.batch_size = int(window), int(stride), int(prime), int(batch_size)

    def setup(self, ctx) -> None:
        super().setup(ctx)
        from dart.data.texts import load_text
        from dart.errors import UnavailableError

        self._windows: list[Window] = []
        self.available: list[str] = []
        for name in self.texts:
            try:
                text = load_text(name)
            except UnavailableError as e:
                self.notes.append(f"perplexity/{name}: not run: {e}")
                continue
            ids = torch.tensor(ctx.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
            spans = windows(ids, self.protocol, self.window, self.stride)
            if self.limit:
                spans = spans[: int(self.limit)]
            self._windows += [Window(name, i, ids[b:e], s) for i, (b, e, s) in enumerate(spans)]
            self.available.append(name)
        dynamic = bool(getattr(ctx.strategy, "dynamic", False))
        self.decode = self.mode == "decode" or (self.mode == "auto" and dynamic)

    def batches(self) -> list[list[Window]]:
        groups: dict[tuple, list[Window]] = {}
        for w in self._windows:
            groups.setdefault((w.ids.numel(), w.n_scored), []).append(w)
        out = []
        for ws in groups.values():
            out += [ws[i : i + self.batch_size] for i in range(0, len(ws), self.batch_size)]
        return out

    def step(self, batch: list[Window]):
        from dart.evals.decoding import token_logprobs

        device = self.ctx.device
        ids = torch.stack([w.ids for w in batch]).to(device)
        T, n = ids.shape[1], batch[0].n_scored
        prefix = max(T - n, self.prime) if self.decode else None
        lp = token_logprobs(self.ctx.model, ids, prefix, mode=self.forcing)[:, -n:]  # the last n targets are the scored ones
        nll = (-lp).sum(dim=1).double().cpu()
        return [(w.text, float(s), n) for w, s in zip(batch, nll)]

    def finalize(self, outputs) -> dict[str, float | None]:
        sums: dict[str, list[float]] = {}
        for rows in outputs:
            for text, s, n in rows:
                acc = sums.setdefault(text, [0.0, 0])
                acc[0] += s
                acc[1] += n
        metrics: dict[str, float | None] = {t: None for t in self.texts}
        for text, (s, n) in sums.items():
            metrics[text] = math.exp(s / n)
            self.extra.setdefault("tokens_scored", {})[text] = n
        self.extra["mode"] = "decode" if self.decode else "prefill"
        return metrics
