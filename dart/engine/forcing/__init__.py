"""Exact chunked teacher forcing: teacher-forced text under any strategy in a few forwards instead of one forward per
token, equal to token-by-token decoding (mode `reference`, dart.engine.stepper) within float tolerance.

The work is G prefixes (prompts; forward 0 is a prefix's prefill) and B continuations: row b continues prefix
group[b] and feeds its teacher-forced tokens forced[b] one by one (forward k >= 1 feeds forced[b][k-1]). Run token
by token, the schedule (dart.engine.schedule) acts between tokens: trace until the masking step, build, prune, check a
drift window every W pruned tokens, re-trace after a trigger, release at step r. Between two such events nothing in
the schedule changes and attention is causal, so one forward over all the tokens up to the next event gives the same
logits and the same monitored attention outputs as one forward per token. Here:

1. the G prefixes run in one forward (right-padded: explicit positions, padding hidden by the attention mask; tracing
   as the prefill does), then the KV cache and the engine's per-row state are expanded over the B rows: a context
   shared by several continuations (the choices of a question) runs once;
2. rounds over rows in the same phase of their segment: the trace forwards, the masks and the
   detector's baseline, then the rest of every row's tokens in pruned chunks;
3. the drift windows of a pruned chunk are evaluated on its monitored attention outputs (one device read per chunk);
   a row whose window fires at forward f is parked and re-traces in the next round, from f + 1, or, under
   strategy.published_quirks, from f itself (forward f is run again: its layers before the monitored one under the
   old masks, the others dense and tracing, as the published code's mid-forward reset). The KV cache before that
   stays valid: the columns after it are hidden from that row by the attention mask.
Rounds: 1 + the largest number of triggers in one row. Strategies without a schedule (dense, fixed masks, CATS) run
the prefixes and then every continuation in one forward.

The package: this module (force, the reference and the lockstep batch), batch.py (the model side of a call: tokens,
KV cache, attention mask, logits to the caller), prompts.py (step 1), rounds.py (step 2, the driver) and chunks.py (the
detector over a chunk, step 3). The schedule's decisions come from dart.engine.schedule, what they do to rows from
dart.engine.bookkeeping, as for the token-by-token driver.

Logits reach the caller through take(rows, j0, logits): logits[i, t] is the model's output after forced index j0 + t
of row rows[i] (j0 = -1 is the prefix's last position; with prefix_logits, -P is its first). It may hold positions
past the row's own length (padding: ignore them), and a later call for the same positions replaces an earlier one
(tokens after a trigger are recomputed).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from dart.engine.controller import controller_of
from dart.engine.patch import prompt_phase
from dart.errors import ConfigError, choice_error

MODES = ("chunked", "reference")
Take = Callable[[list[int], int, torch.Tensor], None]


def has_sliding_window(config) -> bool:
    """Attention limited to a window of columns: columns hidden inside the cache would shift it, so such models are
    run without hidden columns (one prefix at a time, a re-tracing row alone)."""
    if config is None:
        return False
    types = getattr(config, "layer_types", None) or ()
    if any("sliding" in str(t) for t in types):
        return True
    return getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True) is not False


@torch.no_grad()
def force(model, prefixes: Sequence[Sequence[int]], forced: Sequence[Sequence[int]], group: Sequence[int], take: Take,
          mode: str = "chunked", prefix_logits: bool = False, pad_id: int = 0, compact_min: int = 16,
          shared: int = 0) -> None:
    """Teacher-force every row (see the module docstring); `mode` chunked (fast, exact) or reference (one forward per
    token, through the engine's own token-by-token driver). shared: the prefixes' first `shared` tokens are the same
    (few-shot examples), so they run once and the prompts' tails after them."""
    if mode not in MODES:
        raise choice_error("forcing mode", mode, MODES)
    if len(forced) != len(group) or any(not 0 <= g < len(prefixes) for g in group):
        raise ValueError("every continuation needs the index of its prefix")
    if any(len(p) < 1 for p in prefixes):
        raise ValueError("every prefix needs at least one token")
    if not forced:
        return
    if mode == "reference":
        return _reference(model, prefixes, forced, group, take, prefix_logits)
    from dart.engine.forcing.rounds import Rounds

    c = controller_of(model)
    if c is not None and c.is_paused:
        c = None
    if c is not None and c.spec.batch_mask == "shared" and len(forced) > 1:
        # one mask for the batch: every row's re-trace changes every row's mask, so the rows run in lockstep
        return _lockstep(model, prefixes, forced, group, take, prefix_logits)
    if has_sliding_window(getattr(model, "config", None)):  # no hidden cache columns: one row at a time
        for b in range(len(forced)):
            Rounds(model, c, [prefixes[group[b]]], [forced[b]], [0], [b], take, prefix_logits, pad_id,
                   compact_min).run()
        return
    Rounds(model, c, prefixes, forced, group, list(range(len(forced))), take, prefix_logits, pad_id, compact_min,
           shared).run()


def device_of(model) -> torch.device:
    try:
        return model.get_input_embeddings().weight.device
    except AttributeError:  # a stand-in model without embeddings (tests)
        return torch.device("cpu")


def _reference(model, prefixes, forced, group, take, prefix_logits) -> None:
    """One request per row: its prefix as the prefill, then one cached forward per forced token."""
    from transformers import DynamicCache

    dev = device_of(model)
    for b, toks in enumerate(forced):
        pre = list(prefixes[group[b]])
        cache = DynamicCache()
        with prompt_phase(model):
            out = model(input_ids=torch.tensor([pre], device=dev), past_key_values=cache, use_cache=True).logits
        take([b], -len(pre), out) if prefix_logits else take([b], -1, out[:, -1:])
        for j, t in enumerate(toks):
            out = model(input_ids=torch.tensor([[t]], device=dev), past_key_values=cache, use_cache=True).logits
            take([b], j, out)


def _lockstep(model, prefixes, forced, group, take, prefix_logits, chunked: bool = True) -> None:
    """Every row in one batch, token-by-token decoding of the whole batch (the rows share the engine's batch state,
    such as strategy.batch_mask=shared): the prompts in one forward, then the forced tokens in lockstep. Chunked:
    the tokens between two changes of the schedule (Stepper.steady: a build, a baseline vector, a window that closes,
    a re-trace) go in one forward, run as that many decode steps (Controller.decode_steps), and every forward where
    something changes alone, exactly as one forward per token (chunked=False, the reference) runs them. The rows need
    equal prompt and forced lengths."""
    from transformers import DynamicCache

    rows = [list(prefixes[g]) for g in group]
    if len({len(p) for p in rows}) > 1 or len({len(f) for f in forced}) > 1:
        raise ConfigError("strategy.batch_mask=shared teacher-forces a batch in lockstep (one mask for all rows): its "
                          "rows need equal prompt and continuation lengths; use batch size 1 or batch_mask=per_row")
    c = controller_of(model)
    dev = device_of(model)
    B, P, N = len(rows), len(rows[0]), len(forced[0])
    cache = DynamicCache()
    with prompt_phase(model):
        out = model(input_ids=torch.tensor(rows, device=dev), past_key_values=cache, use_cache=True).logits
    take(list(range(B)), -P, out) if prefix_logits else take(list(range(B)), -1, out[:, -1:])
    j = 0
    while j < N:
        k = c.stepper.steady(N - j) if chunked else 1
        ids = torch.tensor([f[j : j + k] for f in forced], device=dev)
        with c.decode_steps(k):
            take(list(range(B)), j, model(input_ids=ids, past_key_values=cache, use_cache=True).logits)
        j += k
