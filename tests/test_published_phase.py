"""strategy.published_quirks (dart_published): the published code's re-trace phase and its allocator's layer-0 count,
on constructed attention signals (scripted triggers), for m = 1, 5 and 20, after a first and a second trigger.

The published code resets a row inside the trigger forward t, right after the last layer's attention output was
checked: forward t is the new segment's step 0 for the last layer (its FFN runs t dense and traces it), the layers
before it already ran t pruned and start tracing at t + 1; the new masks are built at forward t + m; the new baseline
holds the attention outputs of t + 1 .. t + m. Stated here as exact forwards (token by token) and exact statistics
(the sums of a^2 over exactly those forwards, from the activations the model computed), then checked equal on the
chunked path (the same logits, windows and triggers)."""
from __future__ import annotations


import pytest
import torch

from tests.conftest import tiny_llama  # noqa: E402
from dart.compose import drift_spec, engine_spec  # noqa: E402
from dart.engine.controller import Controller  # noqa: E402
from tests.test_engine_forcing import collect, compare  # noqa: E402

P, W, L = 12, 5, 3  # prompt tokens, window, layers (tiny_llama)


def spec(m: int, **kw):
    return engine_spec(sparsity=0.5, masking_step=m, published_quirks=True,
                       drift=drift_spec(window=W, phase="published", min_windows=1, **kw.pop("drift", {})), **kw)


def recorder(c: Controller):
    """Per forward of the (token-by-token) run: each layer's FFN activation a; every mask build (forward, layer or
    None for a between-forward build, the statistics it used); every baseline close (forward, vectors)."""
    acts: dict[tuple[int, int], torch.Tensor] = {}
    builds: list[tuple[int, int | None, list[torch.Tensor]]] = []
    closes: list[tuple[int, int]] = []
    for ffn in c.ffns:
        original = ffn.intermediate

        def intermediate(x, k=None, _orig=original, _l=ffn.index):
            a = _orig(x, k)
            acts[(c.step, _l)] = a.detach().clone()
            return a
        ffn.intermediate = intermediate
    build = c.build

    def recorded_build(rows, layer=None):
        builds.append((c.step, layer, [c.stats.A[l][0].clone() for l in range(c.L)]))
        build(rows, layer)
    c.build = recorded_build
    finalize = c.detector.finalize

    def recorded_finalize(rows):
        closes.append((c.step, c.rows[0].base_count))
        finalize(rows)
    c.detector.finalize = recorded_finalize
    return acts, builds, closes


def l2(acts, layer: int, forwards) -> torch.Tensor:
    return sum(acts[(k, layer)].float().square().sum(dim=(0, 1)) for k in forwards)


def run(m: int, fire: set[int], n_forced: int, mode="reference", **kw):
    model = tiny_llama()
    c = Controller(model, spec(m, **kw)).attach()
    c.detector.fire_steps = fire
    rec = recorder(c)
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, 128, (P,), generator=g).tolist()
    forced = torch.randint(0, 128, (n_forced,), generator=g).tolist()
    out = collect(model, [prompt], [forced], [0], mode)
    return model, c, rec, (prompt, forced), out


@pytest.mark.parametrize("m", [1, 5, 20])
def test_published_retrace_phase_token_by_token(m):
    t1 = m + W  # the first window after the prompt's baseline (which closes at forward m)
    t2 = t1 + m + W  # the first window after the re-traced baseline (which closes at t1 + m)
    n = t2 + m + 3 * W
    _, c, (acts, builds, closes), _, _ = run(m, {t1, t2}, n)
    assert [t["step"] for t in c.counts.triggers] == [t1, t2]
    # windows: m+5, then (after each trigger) the new baseline closes at t + m and windows close every W after it
    assert [e["step"] for e in c.counts.window_log] == [t1, t2] + list(range(t2 + m + W, n + 1, W))
    # baselines: the prompt's through forward m (P + m vectors), then m vectors t + 1 .. t + m
    assert closes == [(m, P + m), (t1 + m, m), (t2 + m, m)]
    # masks: built at forward m (between forwards), then at t + m: between forwards for m >= 2; for m = 1 inside
    # forward t + 1 (the early layers trace it and mask it in the same pass, the last layer uses forward t)
    if m >= 2:
        assert [(k, layer) for k, layer, _ in builds] == [(m, None), (t1 + m, None), (t2 + m, None)]
    else:
        assert [(k, layer) for k, layer, _ in builds] == [(1, None)] + [(t + 1, l) for t in (t1, t2) for l in range(L)]
    for t in (t1, t2):
        if m >= 2:
            (stats,) = [A for k, layer, A in builds if k == t + m]
            for layer in range(L):
                first = t if layer == L - 1 else t + 1
                want = l2(acts, layer, range(first, t + m))
                assert torch.allclose(stats[layer], want, rtol=1e-5, atol=1e-6), (t, layer)
        else:
            for k, layer, stats in builds:
                if k != t + 1:
                    continue
                # the statistics a layer's in-layer build sees: the last layer's from forward t, the others' from
                # t + 1 (the build forward itself: recorded on entry to the layer's build, after its own trace)
                want = l2(acts, layer, [t] if layer == L - 1 else [t + 1])
                assert torch.allclose(stats[layer], want, rtol=1e-5, atol=1e-6), (t, layer)
    # first prompt segment: statistics of forwards 0 .. m - 1 in every layer
    (first,) = [A for k, layer, A in builds if k == m and layer is None] or [[None]]
    if m >= 2:
        for layer in range(L):
            assert torch.allclose(first[layer], l2(acts, layer, range(0, m)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("m", [1, 5, 20])
def test_published_retrace_phase_chunked_equals_reference(m):
    """The chunked path re-runs the trigger forward for the layers after the check: the same logits (every position),
    windows and triggers as token by token."""
    t1 = m + W
    t2 = t1 + m + W
    n = t2 + m + 3 * W
    model = tiny_llama()
    c = Controller(model, spec(m)).attach()
    c.detector.fire_steps = {t1, t2}
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 128, (P,), generator=g).tolist(), torch.randint(0, 128, (P + 3,), generator=g).tolist()]
    forced = [torch.randint(0, 128, (k,), generator=g).tolist() for k in (n, n - 4, t1 + 2)]
    log = compare(model, c, prompts, forced, [0, 1, 1])
    fired = sorted(step for _, step, f in log if f)
    assert t1 in fired and t2 in fired


def test_published_phase_differs_from_the_clean_one():
    """Without the quirk, the re-trace starts at t + 1: the masks come one forward later and the last layer's
    statistics leave forward t out, so the logits after the first trigger differ."""
    m, t1 = 5, 10
    outs = {}
    for quirks in (True, False):
        model = tiny_llama()
        c = Controller(model, engine_spec(sparsity=0.5, masking_step=m, published_quirks=quirks,
                                          drift=drift_spec(window=W, min_windows=1))).attach()
        c.detector.fire_steps = {t1}
        g = torch.Generator().manual_seed(3)
        prompt = torch.randint(0, 128, (P,), generator=g).tolist()
        forced = torch.randint(0, 128, (30,), generator=g).tolist()
        outs[quirks] = collect(model, [prompt], [forced], [0], "reference")[0]
    before = max(float((outs[True][j] - outs[False][j]).abs().max()) for j in range(-1, t1 - 1))
    at = float((outs[True][t1 - 1] - outs[False][t1 - 1]).abs().max())  # the logits of forward t1 (forced index t1-1)
    assert before == 0.0 and at > 1e-4


@pytest.mark.parametrize("m", [10])
def test_allocator_quirk_in_every_auto_allocation_while_decoding(m):
    """allocation=auto under published_quirks: the first layer each allocation builds takes the LAST layer's count, at
    the prompt's build and at every re-trace's (decoding, m = 10); without the quirk layer 0 keeps its own."""
    t1 = m + W
    for quirks in (True, False):
        model = tiny_llama(layers=4)
        c = Controller(model, engine_spec(sparsity=0.6, masking_step=m, allocation="auto", published_quirks=quirks,
                                          drift=drift_spec(window=W, min_windows=1))).attach()
        c.detector.fire_steps = {t1}
        kept = []
        build = c.build

        def recorded(rows, layer=None):
            build(rows, layer)
            kept.append(c.masks()[:, 0].sum(-1).tolist())
        c.build = recorded
        g = torch.Generator().manual_seed(5)
        collect(model, [torch.randint(0, 128, (P,), generator=g).tolist()],
                [torch.randint(0, 128, (t1 + m + 4,), generator=g).tolist()], [0], "reference")
        assert len(kept) == 2  # the prompt's allocation and the re-trace's
        for counts in kept:
            assert (counts[0] == counts[-1]) == quirks or counts[0] == counts[-1] == counts[1], (quirks, counts)
