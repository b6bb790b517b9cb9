"""What a run actually skips (dart/engine/rows.py): effective sparsity hand-computed on scripted schedules (trace
tokens, re-traces, a release step), equal on the token-by-token and the chunked paths; the `effective` budget
holding its target on a scripted trigger pattern; the published detector phase, the two-window baseline and the
published allocator quirk on constructed signals."""
from __future__ import annotations


import pytest
import torch

from tests.conftest import tiny_llama  # noqa: E402
from dart.engine.controller import Controller  # noqa: E402
from dart.engine.forcing import force  # noqa: E402
from dart.engine.placement import Layered  # noqa: E402
from dart.compose import auto_spec, drift_spec, engine_spec  # noqa: E402

I, L = 64, 3  # tiny_llama: 3 layers of 64 neurons; 50% keeps 32


def run(spec: EngineSpec, forced_len: int, mode: str, fire=None, prompt_len=12):
    """One request: a prompt of prompt_len tokens, then forced_len teacher-forced tokens; returns c.effective()."""
    model = tiny_llama()
    c = Controller(model, spec).attach()
    if fire is not None:
        c.detector.fire_steps = fire
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 128, (prompt_len,), generator=g).tolist()
    forced = torch.randint(0, 128, (forced_len,), generator=g).tolist()
    force(model, [prompt], [forced], [0], lambda *a: None, mode=mode)
    return c, c.effective()


@pytest.mark.parametrize("mode", ["reference", "chunked"])
@pytest.mark.parametrize("case", ["m1", "m3", "release", "retrace"])
def test_effective_sparsity_by_hand(mode, case):
    N = 40  # forced tokens = decode forwards 1..40
    if case == "m1":  # every decode token pruned at 50%
        spec, fire, dense = engine_spec(sparsity=0.5, masking_step=1, drift=drift_spec(enabled=False)), None, 0
    elif case == "m3":  # forwards 1, 2 trace (dense)
        spec, fire, dense = engine_spec(sparsity=0.5, masking_step=3, drift=drift_spec(enabled=False)), None, 2
    elif case == "release":  # forwards 30..40 dense again
        spec, fire, dense = engine_spec(sparsity=0.5, masking_step=1, release_step=30, drift=drift_spec(enabled=False)), None, 11
    else:  # a trigger at 6 (first window after the 12-token prompt's baseline + forward 1): forwards 7..11
        # re-trace (retrace_tokens=5), then pruned again; the new baseline closes at forward 16 (10 vectors),
        # windows close at 21, 26, ...: none fires
        spec = engine_spec(sparsity=0.5, masking_step=1, retrace_tokens=5)
        fire, dense = {6}, 5
    c, eff = run(spec, N, mode, fire)
    assert eff["tokens"] == {"prefill": 12, "decode": N}
    assert eff["dense_tokens"] == {"prefill": 12, "decode": dense}
    assert eff["prefill"] == 0.0
    assert eff["decode"] == pytest.approx(0.5 * (N - dense) / N, abs=1e-12)
    assert eff["per_layer"] == pytest.approx([0.5 * (N - dense) / N] * L, abs=1e-12)
    assert eff["all"] == pytest.approx(0.5 * (N - dense) / (N + 12), abs=1e-12)
    if case == "retrace":
        assert [t["step"] for t in c.counts.triggers] == [6]


def test_compat_prunes_the_prefill():
    spec = engine_spec(sparsity=0.5, masking_step=0, protocol="compat", drift=drift_spec(enabled=False))
    for mode in ("reference", "chunked"):
        _, eff = run(spec, 20, mode)
        assert eff["prefill"] == pytest.approx(0.5) and eff["decode"] == pytest.approx(0.5)


@pytest.mark.parametrize("mode", ["reference", "chunked"])
def test_effective_budget_holds_the_target(mode):
    """Triggers every 25 forwards, each followed by 5 dense re-trace tokens: with the mask budget every mask
    prunes 50% and the run skips 40% of the decode work; the effective budget prunes each mask harder to repay
    the dense tokens and lands on the target."""
    fire = {6 + 25 * i for i in range(8)}  # windows close at 6, then every 5 forwards after each new baseline...
    common = dict(sparsity=0.5, masking_step=1, retrace_tokens=5, drift=drift_spec(window=5))
    _, mask = run(engine_spec(**common), 160, mode, fire=set(range(6, 200, 25)))
    c, eff = run(engine_spec(**common, budget="effective", budget_horizon=25), 160, mode, fire=set(range(6, 200, 25)))
    n_trig = len(c.counts.triggers)
    assert n_trig >= 5
    assert mask["decode"] < 0.5 - 0.05  # the label overstates what it skips
    assert eff["decode"] == pytest.approx(0.5, abs=0.02)
    del fire


def test_budget_reference_equals_chunked():
    common = dict(sparsity=0.5, masking_step=1, retrace_tokens=5, budget="effective", budget_horizon=25)
    fire = set(range(6, 200, 25))
    a, ea = run(engine_spec(**common), 160, "reference", fire=fire)
    b, eb = run(engine_spec(**common), 160, "chunked", fire=fire)
    assert ea["decode"] == pytest.approx(eb["decode"], abs=1e-12)
    assert [t["step"] for t in a.counts.triggers] == [t["step"] for t in b.counts.triggers]


# ----------------------------------------------------------------------------- detector phase and baseline
def controller_with_signal(phase: str, min_windows: int, m: int = 1):
    """A tiny Llama whose monitored attention output is replaced by a scripted signal per forward."""
    model = tiny_llama()
    seq = []

    def hook(module, args, output):
        o = output[0]
        v = torch.zeros_like(o)
        for t in range(o.shape[1]):
            k = len(seq)
            v[:, t, k % v.shape[-1]] = 1.0  # a different direction every token: cos of window means ~ low
            v[:, t, 0] += 3.0
            seq.append(k)
        return (v,) + tuple(output[1:])

    model.model.layers[-1].self_attn.register_forward_hook(hook)
    spec = engine_spec(sparsity=0.5, masking_step=m, drift=drift_spec(window=5, phase=phase, min_windows=min_windows,
                                                                   min_margin=10.0))  # never fires
    return model, Controller(model, spec).attach()


@pytest.mark.parametrize("phase,first_window", [("published", 6), ("before_mask", 5)])
def test_published_phase_shifts_every_window_by_one_forward(phase, first_window):
    """The published code puts forward m into the baseline, so its windows close at m+W, m+2W, ...; stopping the
    baseline at m-1 closes them at m+W-1, ...: on the same input every check lands on another forward."""
    model, c = controller_with_signal(phase, min_windows=1)
    force(model, [list(range(1, 13))], [list(range(20, 40))], [0], lambda *a: None, mode="reference")
    assert [e["step"] for e in c.counts.window_log] == list(range(first_window, 21, 5))


def test_a_baseline_holds_two_windows():
    """After a trigger, a one-token re-trace no longer sets the baseline alone (sigma 0, tau = mu - 0.1 = 0.9):
    the baseline keeps collecting (the new masks already in use) until it holds 2 windows of W vectors."""
    model, c = controller_with_signal("published", min_windows=2)
    c.detector.fire_steps = {6}
    seen = []
    orig = c.detector.finalize

    def finalize(rows):
        seen.append((c.step, c.rows[0].base_count))
        orig(rows)

    c.detector.finalize = finalize
    force(model, [list(range(1, 13))], [list(range(20, 60))], [0], lambda *a: None, mode="reference")
    # the prompt's baseline closes at forward 1 (12 + 1 vectors); after the trigger at 6 the re-trace starts at
    # 7 and its baseline closes at forward 16 with 10 vectors; its windows close at 21, 26, ...
    assert seen == [(1, 13), (16, 10)]
    assert [e["step"] for e in c.counts.window_log] == [6, 21, 26, 31, 36]
    assert float(c.detector.tau[0]) < 0.9 - 1e-3  # two windows: mu and sigma from the signal, not a constant


def test_allocator_quirk_under_published_quirks():
    """The published allocator builds the first layer it builds with the LAST layer's count, at every depth-aware
    allocation: behind strategy.published_quirks (dart_published), whatever the protocol."""
    model = tiny_llama(layers=4)
    for quirks, protocol, m in ((True, "compat", 0), (True, "causal", 1), (False, "compat", 0), (False, "causal", 1)):
        c = Controller(model, engine_spec(sparsity=0.6, masking_step=m, protocol=protocol, allocation="auto",
                                          published_quirks=quirks, drift=drift_spec(enabled=False)))
        c.reset_rows(1)
        # constructed layer scores S_l = (1 - mean c) * mean r with mean r = 1: layer 0 the most important
        c.stats.align = Layered.split(c.spans, torch.tensor([[[0.0, 1.0, 1.0]], [[0.5, 1.0, 1.0]], [[0.8, 1.0, 1.0]], [[0.9, 1.0, 1.0]]]))
        c.stats.A.fill_(1.0)
        c.build(torch.ones(1, dtype=torch.bool))
        kept = c.masks()[:, 0].sum(-1).tolist()
        honest = Controller(model, engine_spec(sparsity=0.6, masking_step=m, protocol=protocol, allocation="auto",
                                               drift=drift_spec(enabled=False)))
        honest.reset_rows(1)
        honest.stats.align = c.stats.align
        honest.stats.A.fill_(1.0)
        honest.build(torch.ones(1, dtype=torch.bool))
        want = honest.masks()[:, 0].sum(-1).tolist()
        assert want[0] != want[-1]
        assert kept == ([want[-1]] + want[1:] if quirks else want), (quirks, protocol)
