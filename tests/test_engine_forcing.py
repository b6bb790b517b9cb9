"""Exact chunked teacher forcing (dart/engine/forcing/) against its reference, token-by-token decoding through the
engine's own schedule: every logit within 1e-4 and the same drift checks and triggers, on tiny random Llama, GPT-2
and GPT-NeoX models, with scripted triggers (first, middle and last window of a continuation; several in one
continuation), natural triggers, m = 0 / 1 / 2 / 20, a release step, the EMA statistic, depth-aware allocation,
shared prefixes and batch 1 == batch B."""
from __future__ import annotations


import pytest
import torch

from tests.conftest import MODEL_BUILDERS, tiny_llama  # noqa: E402
from dart.engine.controller import Controller  # noqa: E402
from dart.engine.forcing import force  # noqa: E402
from dart.compose import auto_spec, drift_spec, engine_spec  # noqa: E402

TOL = 1e-4


def work(seed=1, prefix_lens=(7, 12), forced_lens=(3, 30, 17, 0, 41), group=(0, 1, 1, 0, 0), vocab=128):
    g = torch.Generator().manual_seed(seed)
    prefixes = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in prefix_lens]
    forced = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in forced_lens]
    return prefixes, forced, list(group)


def collect(model, prefixes, forced, group, mode, **kw):
    """{row: {forced index j: log-probs}} for j in -1 .. N-1 (later calls replace earlier ones)."""
    out = {b: {} for b in range(len(forced))}

    def take(rows, j0, logits):
        for i, b in enumerate(rows):
            for t in range(logits.shape[1]):
                if -1 <= j0 + t < len(forced[b]):
                    out[b][j0 + t] = logits[i, t].float().log_softmax(-1)

    force(model, prefixes, forced, group, take, mode=mode, **kw)
    return out


def checks(c: Controller, base: tuple[int, int]):
    """(row, forward, fired) of every drift check since `base` = (log length, requests), rows numbered from 0."""
    fired = {(t["request"], t["step"]) for t in c.counts.triggers}
    log = c.counts.window_log[base[0]:]
    return sorted((e["request"] - base[1] - 1, e["step"], (e["request"], e["step"]) in fired) for e in log)


def mark(c: Controller) -> tuple[int, int]:
    return len(c.counts.window_log), c.counts.requests


def compare(model, c, prefixes, forced, group, **kw):
    n0 = mark(c)
    ref = collect(model, prefixes, forced, group, "reference", **kw)
    ref_checks = checks(c, n0)
    n1 = mark(c)
    got = collect(model, prefixes, forced, group, "chunked", **kw)
    got_checks = checks(c, n1)
    worst = 0.0
    for b in ref:
        assert sorted(ref[b]) == sorted(got[b]) == list(range(-1, len(forced[b]))), b
        for j in ref[b]:
            worst = max(worst, float((ref[b][j] - got[b][j]).abs().max()))
    assert worst < TOL, worst
    assert got_checks == ref_checks
    return ref_checks


def attach(model, **spec):
    drift = spec.pop("drift", {})
    extra = {"global_scores": spec.pop("global_scores")} if "global_scores" in spec else {}
    return Controller(model, engine_spec(sparsity=spec.pop("sparsity", 0.5), drift=drift_spec(**drift), **spec), **extra).attach()


@pytest.mark.parametrize("arch", sorted(MODEL_BUILDERS))
@pytest.mark.parametrize("m", [1, 2, 20])
def test_natural_triggers(arch, m):
    """A threshold at the baseline's mean (no margin): windows fall below it about half the time, so most rows
    re-trace several times; the chunked run makes the same checks and triggers and the same logits."""
    model = MODEL_BUILDERS[arch]()
    c = attach(model, masking_step=m, drift=dict(sigma_scale=0.0, min_margin=0.0))
    prefixes, forced, group = work(forced_lens=(3, 30, 17, 0, 61))
    got = compare(model, c, prefixes, forced, group)
    assert sum(f for *_, f in got) >= (4 if m < 20 else 1)


# The windows' timeline with the defaults (m = 1, W = 5, drift.phase=published, min_windows=2): the baseline
# collects the prompt's vectors and those of forward 1 (the first pruned one) and on until it holds 10; windows
# then close every 5 pruned forwards. Row 1 (a 12-token prompt): baseline closed at forward 1, windows close at
# 6, 11, 16, 21, 26. After a trigger at f: forward f+1 re-traces (one token), f+2 prunes, the baseline closes at
# f+10 (10 vectors), windows close at f+15, f+20, ...
SCRIPTS = {
    "first": ({6}, [(1, 6)]),
    "middle": ({16}, [(1, 16)]),
    "last": ({26}, [(1, 26)]),  # the last window of the 30-token row
    "several": ({6, 21, 26, 29}, [(1, 6), (1, 21)]),  # after 21 the baseline would close at 31: past the row's end
}


@pytest.mark.parametrize("arch", sorted(MODEL_BUILDERS))
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_scripted_triggers(arch, script):
    model = MODEL_BUILDERS[arch]()
    c = attach(model, masking_step=1)
    c.detector.fire_steps, expected = SCRIPTS[script]
    prefixes, forced, group = work(forced_lens=(3, 30), group=(0, 1))
    got = compare(model, c, prefixes, forced, group)
    assert [(row, step) for row, step, fired in got if fired] == expected


@pytest.mark.parametrize("m,fire,expected", [
    # row 0 (7-token prompt): windows close at 8, 13, ... (the baseline needs 3 decode vectors); after a trigger
    # at 8 the baseline closes at 18, windows at 23; row 1 (12-token prompt): 6, 11, ...; after 6: 21
    (1, {6, 8, 21, 23}, [(0, 8), (0, 23), (1, 6), (1, 21)]),
    # m = 20: the baseline closes at forward 20 (published: the forward that builds the masks), windows at 25, 30;
    # a re-trace runs 20 dense forwards, builds at f+21, windows at f+26
    (20, {25, 51}, [(0, 25), (0, 51), (1, 25)]),
])
def test_scripted_triggers_long_masking_step(m, fire, expected):
    model = tiny_llama()
    c = attach(model, masking_step=m)
    c.detector.fire_steps = fire
    prefixes, forced, group = work(forced_lens=(70, 25), group=(0, 1))
    got = compare(model, c, prefixes, forced, group)
    assert [(row, step) for row, step, fired in got if fired] == expected


@pytest.mark.parametrize("spec", [
    dict(masking_step=0, protocol="compat"),  # same-pass: the prefill masked with its own statistics
    dict(masking_step=1, release_step=12),  # positions from forward 12 on run dense, no checks after it
    dict(masking_step=2, statistic="ema", ema_decay=0.9),
    dict(masking_step=1, allocation="auto"),
    dict(masking_step=3, ranking="max"),
    dict(masking_step=1, statistic="griffin"),
    dict(masking_step=1, mask_rule="mean"),
    dict(masking_step=1, execution="masked"),
    dict(masking_step=1, execution="compact"),
    dict(masking_step=1, retrace_tokens=8),  # a re-trace traces 8 tokens before its new masks
    dict(masking_step=2, retrace_tokens=1, drift=dict(cooldown=12)),
    dict(masking_step=1, drift=dict(phase="before_mask")),
    dict(masking_step=1, drift=dict(min_windows=1)),  # the hair-trigger baseline of one re-trace token
    dict(masking_step=1, drift=dict(min_windows=1, nan_tau_compat=True)),
    dict(masking_step=3, drift=dict(min_windows=4)),
    dict(masking_step=1, budget="effective", budget_horizon=16),
    dict(masking_step=1, prior_mix=0.5),
])
def test_every_knob_natural_triggers(spec):
    model = tiny_llama()
    spec = dict(spec)
    drift = dict(sigma_scale=0.0, min_margin=0.0, **spec.pop("drift", {}))
    if spec.get("prior_mix"):
        spec["global_scores"] = torch.rand(3, 64, generator=torch.Generator().manual_seed(3))
    c = attach(model, drift=drift, **spec)
    prefixes, forced, group = work(forced_lens=(3, 30, 17, 0, 41))
    got = compare(model, c, prefixes, forced, group)
    if spec.get("release_step"):
        assert got and all(step < 12 for _, step, _ in got)
    else:
        assert any(f for *_, f in got)


def test_no_detector_and_fixed_masks():
    """static_prompt (no detector) and fixed masks (strategy=static): no rounds, same logits."""
    model = tiny_llama()
    c = attach(model, masking_step=2, drift=dict(enabled=False))
    compare(model, c, *work())
    c.detach()
    fixed = torch.rand(3, 64, generator=torch.Generator().manual_seed(0)) < 0.5
    c = Controller(model, engine_spec(drift=drift_spec(enabled=False)), fixed_masks=fixed).attach()
    compare(model, c, *work())


def test_dense_model_without_engine():
    model = tiny_llama()
    prefixes, forced, group = work()
    ref = collect(model, prefixes, forced, group, "reference")
    got = collect(model, prefixes, forced, group, "chunked")
    for b in ref:
        for j in ref[b]:
            assert torch.allclose(ref[b][j], got[b][j], atol=TOL, rtol=0)


def test_batch_invariance_and_shared_prefixes():
    """All rows at once (prefixes shared, batched re-trace rounds) == each row alone (chunked)."""
    model = tiny_llama()
    c = attach(model, masking_step=1, drift=dict(sigma_scale=0.0, min_margin=0.0))
    prefixes, forced, group = work(forced_lens=(3, 30, 17, 0, 41, 30), group=(0, 1, 1, 0, 0, 1))
    n0 = mark(c)
    together = collect(model, prefixes, forced, group, "chunked")
    log_together = checks(c, n0)
    alone, log_alone = {}, []
    for b in range(len(forced)):
        n1 = mark(c)
        alone[b] = collect(model, [prefixes[group[b]]], [forced[b]], [0], "chunked")[0]
        log_alone += [(b, step, f) for _, step, f in checks(c, n1)]
    assert sorted(log_alone) == log_together and any(f for *_, f in log_together)
    for b in range(len(forced)):
        for j in alone[b]:
            assert float((alone[b][j] - together[b][j]).abs().max()) < TOL, (b, j)


def test_prefix_logits():
    """prefix_logits: the prefill's logits at every prefix position (perplexity scores tokens inside the prime)."""
    model = tiny_llama()
    c = attach(model, masking_step=1)
    prefixes, forced, group = work(prefix_lens=(9,), forced_lens=(12, 12), group=(0, 0))
    seen = {}

    def take(rows, j0, logits):
        for i, b in enumerate(rows):
            for t in range(logits.shape[1]):
                seen[b, j0 + t] = logits[i, t]

    force(model, prefixes, forced, group, take, prefix_logits=True)
    with c.paused():
        dense = model(torch.tensor([prefixes[0]])).logits[0]
    for j in range(-9, 0):
        assert torch.allclose(seen[0, j], dense[9 + j], atol=1e-5) and torch.allclose(seen[1, j], dense[9 + j], atol=1e-5)


@pytest.mark.parametrize("allocation,expected", [
    ("uniform", [(2, 12), (5, 41)]),  # the trace forward and the pruned chunk are one forward (masks built inside)
    ("auto", [(2, 12), (5, 1), (5, 40)]),  # depth-aware allocation needs every layer's statistics first
])
def test_forward_count(allocation, expected):
    """Without triggers: one prefill, then the trace (m - 1 = 1 token) and the pruned rest, whatever the lengths."""
    model = tiny_llama()
    attach(model, masking_step=2, allocation=allocation, drift=dict(enabled=False))
    calls = []
    h = model.register_forward_pre_hook(lambda mod, args, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    force(model, *work(), lambda *a: None)
    h.remove()
    assert calls == expected


def test_retrace_rounds_batch_parked_rows_and_grow_chunks():
    """After a trigger a row is parked with its cache up to the trigger; the parked rows re-trace together in one
    forward per chunk, the first chunk 4 windows past the new baseline, then doubling."""
    model = tiny_llama()
    c = attach(model, masking_step=1)
    c.detector.fire_steps = {6, 8}
    calls = []
    h = model.register_forward_pre_hook(lambda mod, args, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    force(model, *work(forced_lens=(70, 30, 3), group=(0, 1, 0)), lambda *a: None)
    h.remove()
    # prefill; all rows at once; row 0 fired at forward 8, row 1 at 6 -> together: the re-trace token, the 9
    # forwards to the baseline's 10 vectors and 4 windows (30), then 40 more of the longer row's 32 left
    assert calls == [(2, 12), (3, 70), (2, 30), (1, 32)]
@pytest.mark.parametrize("spec", [
    dict(masking_step=1, drift=dict(sigma_scale=0.0, min_margin=0.0)),
    dict(masking_step=2, statistic="ema", ema_decay=0.9, drift=dict(sigma_scale=0.0, min_margin=0.0)),
    dict(masking_step=1, allocation="auto"),
    dict(masking_step=1, statistic="griffin", drift=dict(enabled=False)),
    "fixed", "dense",
])
def test_shared_prompt_head(spec):
    """Prompts with a common head (few-shot examples): the head runs once, then each prompt's tail; statistics,
    EMA weights, the detector's windows and the logits equal the token-by-token reference."""
    model = tiny_llama()
    if spec == "fixed":
        c = Controller(model, engine_spec(drift=drift_spec(enabled=False)),
                       fixed_masks=torch.rand(3, 64, generator=torch.Generator().manual_seed(0)) < 0.5).attach()
    elif spec != "dense":
        c = attach(model, **dict(spec))
    head = work(prefix_lens=(13,))[0][0]
    prefixes, forced, group = work(prefix_lens=(4, 9, 1), forced_lens=(3, 30, 17, 0, 41), group=(0, 1, 2, 0, 2))
    prefixes = [head + p for p in prefixes]
    calls = []
    h = model.register_forward_pre_hook(lambda mod, args, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    if spec == "dense":
        ref = collect(model, prefixes, forced, group, "reference")
        calls.clear()
        got = collect(model, prefixes, forced, group, "chunked", shared=13)
        worst = max(float((ref[b][j] - got[b][j]).abs().max()) for b in ref for j in ref[b])
        assert worst < TOL
    else:
        calls_before = len(calls)
        compare(model, c, prefixes, forced, group, shared=13)
        calls[:] = calls[calls_before:]
        calls[:] = calls[[i for i, s in enumerate(calls) if s == (1, 13)][0]:]  # the chunked run's forwards
    h.remove()
    assert calls[:2] == [(1, 13), (3, 9)]  # the head once, then the three tails
