"""The re-trace timing controls (strategy.retrace_at = periodic / random) and the dense fallback (strategy.on_retrace
= dense): the exact forwards they promise (triggers, masks, dense forwards, effective sparsity), token by token and in
chunked teacher forcing alike."""
from __future__ import annotations


import pytest
import torch

from tests.conftest import tiny_llama  # noqa: E402
from dart.compose import drift_spec, engine_spec  # noqa: E402
from dart.engine.controller import Controller  # noqa: E402
from dart.engine.schedule import coin  # noqa: E402
from tests.test_engine_forcing import collect  # noqa: E402

P, N, K = 12, 60, 5  # prompt tokens, forced tokens, retrace_tokens


def controller(**kw):
    model = tiny_llama()
    drift = kw.pop("drift", {"enabled": False})
    c = Controller(model, engine_spec(sparsity=0.5, masking_step=1, retrace_tokens=K, drift=drift_spec(**drift), **kw))
    return model, c.attach()


def work(n=N, seed=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 128, (P,), generator=g).tolist()], [torch.randint(0, 128, (n,), generator=g).tolist()]


def run(model, c, mode):
    prompts, forced = work()
    builds = []
    build = c.build

    def recorded(rows, layer=None):
        builds.append(c.step)
        build(rows, layer)
    c.build = recorded
    out = collect(model, prompts, forced, [0], mode)
    return out, [t["step"] for t in c.counts.triggers], builds, c.effective(), c.masks()[:, 0].clone()


def simulate(fires, remask: bool):
    """The promised schedule by hand: masks from forward 1 (m = 1); after a trigger at t, forwards t+1..t+K dense, then
    new masks (remask: built at t+K+1) or the same ones; `fires(since, step)` decides a pruned forward's trigger."""
    triggers, dense, since, hold = [], 0, 0, 0
    for step in range(1, N + 1):
        if hold:
            hold -= 1
            dense += 1
            continue
        since += 1
        if fires(since, step):
            triggers.append(step)
            since, hold = 0, K
    return triggers, dense


@pytest.mark.parametrize("mode", ["reference", "chunked"])
@pytest.mark.parametrize("action", ["remask", "dense"])
def test_periodic(mode, action):
    model, c = controller(retrace_at="periodic", retrace_every=10, on_retrace=action)
    assert c.detector is None  # the controls ignore the text
    _, triggers, builds, eff, mask = run(model, c, mode)
    want, dense = simulate(lambda since, step: since >= 10, action == "remask")
    assert triggers == want == [10, 25, 40, 55]
    assert eff["dense_tokens"]["decode"] == dense == 20
    assert eff["decode"] == pytest.approx(0.5 * (N - dense) / N, abs=1e-12)
    if mode == "reference":  # masks at forward 1, then (remask) one forward after each re-trace of K forwards
        assert builds == ([1, 16, 31, 46] if action == "remask" else [1])


@pytest.mark.parametrize("mode", ["reference", "chunked"])
def test_random(mode):
    model, c = controller(retrace_at="random", retrace_rate=0.08, retrace_seed=7)
    _, triggers, _, eff, _ = run(model, c, mode)
    request = 1  # the continuation's request number in both drivers
    want, dense = simulate(lambda since, step: coin(7, request, 0, step) < 0.08, True)
    assert triggers == want and len(want) >= 2
    assert eff["dense_tokens"]["decode"] == dense


def test_dense_fallback_keeps_the_mask():
    """static_prompt + on_retrace=dense: K dense forwards every 10 pruned ones, never a new mask."""
    model, c = controller(retrace_at="periodic", retrace_every=10, on_retrace="dense")
    first = None
    build = c.build

    def once(rows, layer=None):
        nonlocal first
        build(rows, layer)
        first = c.masks()[:, 0].clone() if first is None else first
    c.build = once
    prompts, forced = work()
    collect(model, prompts, forced, [0], "reference")
    assert c.counts.builds == 1 and torch.equal(c.masks()[:, 0], first)


@pytest.mark.parametrize("timing,kw", [("periodic", {"retrace_every": 7}), ("random", {"retrace_rate": 0.1})])
@pytest.mark.parametrize("action", ["remask", "dense"])
def test_chunked_equals_reference(timing, kw, action):
    """Several continuations of two prompts (shared contexts, batched re-trace rounds) against token by token, each
    on a fresh engine (the coins depend on the request numbers, which a second run on the same engine continues)."""
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 128, (n,), generator=g).tolist() for n in (7, 12)]
    forced = [torch.randint(0, 128, (n,), generator=g).tolist() for n in (3, 30, 17, 0, 41)]
    group = [0, 1, 1, 0, 0]
    outs = {}
    for mode in ("reference", "chunked"):
        model, c = controller(retrace_at=timing, on_retrace=action, **kw)
        outs[mode] = (collect(model, prompts, forced, group, mode), sorted((t["request"], t["step"]) for t in c.counts.triggers),
                      c.effective()["dense_tokens"]["decode"])
    (ref, tr_ref, d_ref), (got, tr_got, d_got) = outs["reference"], outs["chunked"]
    assert tr_ref == tr_got and len(tr_ref) >= 3 and d_ref == d_got
    assert max(float((ref[b][j] - got[b][j]).abs().max()) for b in ref for j in ref[b]) < 1e-4


def test_detector_with_a_dense_hold():
    """Detector timing, on_retrace=dense: after a trigger at 6 the forwards 7..11 run dense, the baseline is kept, and
    the windows close again every 5 pruned forwards from forward 12 on."""
    model, c = controller(on_retrace="dense", drift={"window": 5, "min_windows": 1})
    c.detector.fire_steps = {6}
    prompts, forced = work(n=30)
    ref = collect(model, prompts, forced, [0], "reference")
    assert [e["step"] for e in c.counts.window_log] == [6, 16, 21, 26]
    assert c.effective()["dense_tokens"]["decode"] == 5 and c.counts.builds == 1
    model2, c2 = controller(on_retrace="dense", drift={"window": 5, "min_windows": 1})
    c2.detector.fire_steps = {6}
    got = collect(model2, prompts, forced, [0], "chunked")
    assert [e["step"] for e in c2.counts.window_log] == [6, 16, 21, 26]
    assert max(float((ref[0][j] - got[0][j]).abs().max()) for j in ref[0]) < 1e-4


def test_bad_values():
    from dart.errors import ConfigError

    for kw, text in (({"retrace_at": "sometimes"}, "retrace_at"), ({"retrace_every": 0}, "retrace_every"),
                     ({"retrace_rate": 1.5}, "retrace_rate"), ({"on_retrace": "skip"}, "on_retrace")):
        with pytest.raises(ConfigError, match=text):
            engine_spec(**kw).validate()
