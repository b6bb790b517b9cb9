"""The topic-drift detector (docs/method.md section 5): directly on constructed signals, and through the controller
with the monitored attention output replaced by a scripted signal (a forward hook registered before the
controller's own, so the controller sees the scripted vectors)."""
from __future__ import annotations

import dataclasses

import math

import pytest
import torch
from transformers import DynamicCache

from tests.conftest import tiny_llama  # noqa: E402
from dart.engine.controller import Controller  # noqa: E402
from dart.engine.drift import DriftDetector  # noqa: E402
from dart.compose import auto_spec, drift_spec, engine_spec  # noqa: E402


def cos(u, v) -> float:
    u, v = [float(x) for x in u], [float(x) for x in v]
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def mean(vs):
    return [sum(col) / len(vs) for col in zip(*vs)]


def tau_by_hand(vectors, W=5, scale=0.1, margin=0.1):
    """c = mean of all; windows of W, remainder dropped (one window of everything if fewer than W);
    tau = mu - max(scale * sigma, margin) with the unbiased std (0 for a single window)."""
    c = mean(vectors)
    n_full = len(vectors) // W
    windows = [vectors[i * W : (i + 1) * W] for i in range(n_full)] or [vectors]
    cs = [cos(mean(w), c) for w in windows]
    mu = sum(cs) / len(cs)
    sigma = math.sqrt(sum((x - mu) ** 2 for x in cs) / (len(cs) - 1)) if len(cs) > 1 else 0.0
    return mu - max(scale * sigma, margin), c, cs


def feed_trace(det, rows_vectors, pads, chunks):
    """Feed per-row vector lists through collect_trace in forwards of sizes `chunks` (the first one left-padded
    with pads[b] garbage vectors of weight 0)."""
    B = len(rows_vectors)
    pos = [0] * B
    for i, size in enumerate(chunks):
        T = size
        v = torch.zeros(B, T, det.D)
        w = torch.zeros(B, T)
        for b in range(B):
            n_pad = pads[b] if i == 0 else 0
            take = rows_vectors[b][pos[b] : pos[b] + T - n_pad]
            pos[b] += len(take)
            v[b, :n_pad] = 1000.0  # garbage under padding
            for t, vec in enumerate(take):
                v[b, n_pad + t] = torch.tensor(vec)
                w[b, n_pad + t] = 1.0
        det.collect_trace(v, w)
    assert pos == [len(r) for r in rows_vectors]


def test_tau_by_hand_windows_of_five():
    """Row 0: 13 vectors = window [1, .2] x5, window [1, -.1] x5, remainder [1, 0] x3 (dropped from the windows
    but part of the baseline). Row 1: 10 vectors (two windows), left-padded by 3 in the prefill."""
    r0 = [[1.0, 0.2, 0.0, 0.0]] * 5 + [[1.0, -0.1, 0.0, 0.0]] * 5 + [[1.0, 0.0, 0.0, 0.0]] * 3
    r1 = [[1.0, 0.0, 0.5, 0.0]] * 5 + [[1.0, 0.0, -0.3, 0.0]] * 5
    det = DriftDetector(drift_spec(), 4, "cpu")
    det.reset(2)
    # prefill of 8 positions (row 1: 3 padding + 5 vectors), then 5 single-token forwards
    feed_trace(det, [r0, r1[:10]], pads=[0, 3], chunks=[8, 1, 1, 1, 1, 1])
    det.finalize(torch.tensor([True, True]))
    for b, vecs in enumerate([r0, r1]):
        tau, c, cs = tau_by_hand(vecs)
        assert det.center[b].tolist() == pytest.approx(c, abs=1e-6)
        assert det.tau[b].item() == pytest.approx(tau, abs=1e-6)
    # the numbers themselves: row 0's baseline is [1, 1/26, 0, 0]; two windows -> tau = mu - 0.1 (sigma small)
    c0 = [1.0, 1 / 26, 0.0, 0.0]
    mu0 = (cos([1, 0.2, 0, 0], c0) + cos([1, -0.1, 0, 0], c0)) / 2
    assert det.tau[0].item() == pytest.approx(mu0 - 0.1, abs=1e-6)
    # keeping the remainder as a third window would give another threshold: the test tells them apart
    alt = (cos([1, 0.2, 0, 0], c0) + cos([1, -0.1, 0, 0], c0) + cos([1, 0, 0, 0], c0)) / 3 - 0.1
    assert abs(alt - det.tau[0].item()) > 1e-4
    assert det.count.tolist() == [0.0, 0.0]  # the traced sums are released after the baseline


def test_tau_large_sigma_uses_the_scaled_std():
    """Window means [1, 0] and [-1, 0] against the baseline [10/12, 0]: cos = 1 and -1, mu = 0,
    sigma = sqrt(2), tau = 0 - max(0.1 sqrt 2, 0.1) = -0.1414..."""
    vecs = [[1.0, 0.0]] * 5 + [[-1.0, 0.0]] * 5 + [[5.0, 0.0]] * 2
    det = DriftDetector(drift_spec(), 2, "cpu")
    det.reset(1)
    feed_trace(det, [vecs], pads=[0], chunks=[12])
    det.finalize(torch.tensor([True]))
    assert det.tau.item() == pytest.approx(-0.1 * math.sqrt(2), abs=1e-6)


@pytest.mark.parametrize("n", [1, 3, 4, 5, 7, 9])
def test_tau_with_fewer_than_two_windows(n):
    """Fewer than 10 vectors: one window, sigma = 0 (not NaN), tau = cos_0 - 0.1; with fewer than W vectors the
    window is all of them (cos 1, tau 0.9). nan_tau_compat reproduces the published NaN (detector off)."""
    vecs = [[1.0, 0.1 * i, 0.0] for i in range(n)]
    expected, _, cs = tau_by_hand(vecs)
    for compat in (False, True):
        det = DriftDetector(drift_spec(nan_tau_compat=compat), 3, "cpu")
        det.reset(1)
        feed_trace(det, [vecs], pads=[0], chunks=[n])
        det.finalize(torch.tensor([True]))
        if compat:
            assert math.isnan(det.tau.item())
            det.collect_decode(torch.tensor([[[0.0, 0.0, 1.0]]]).expand(1, 1, 3) * 5, torch.tensor([True]))
            cosine, fired = check(det, torch.tensor([True]), rows_of(1))
            assert cosine.item() == pytest.approx(0.0, abs=1e-6) and not fired.item()  # silently off
        else:
            assert not math.isnan(det.tau.item())
            assert det.tau.item() == pytest.approx(expected, abs=1e-6)
            if n < 5:
                assert det.tau.item() == pytest.approx(0.9, abs=1e-6)
            else:
                assert det.tau.item() == pytest.approx(cs[0] - 0.1, abs=1e-6)


def rows_of(B):
    from dart.engine.rows import Row

    return [Row(n=1) for _ in range(B)]


def check(det, rows, state):
    """A window check as the drivers make it: the detector's cosine (device), then the schedule's pressure rule
    (Schedule.press, host) on each row's state."""
    from dart.compose import engine_spec
    from dart.engine.schedule import Schedule

    sched = Schedule(engine_spec(drift=dataclasses.asdict(det.spec)), det.W, False, split=1)
    cosine = det.close_window(rows)
    fired = [bool(on) and sched.press(state[b], det.below(float(cosine[b]), float(det.tau[b]), 0))
             for b, on in enumerate(rows.tolist())]
    return cosine, torch.tensor(fired)


def _traced(spec, B=1):
    det = DriftDetector(spec, 4, "cpu")
    det.reset(B)
    base = [[1.0, 0.0, 0.01 * (i % 3), 0.0] for i in range(10)]
    feed_trace(det, [base] * B, pads=[0] * B, chunks=[6, 1, 1, 1, 1])
    det.finalize(torch.ones(B, dtype=torch.bool))
    return det


def _window(det, vec, rows, state):
    for _ in range(det.W):
        det.collect_decode(torch.tensor(vec).expand(det.B, 2, 4), rows)  # only the last position counts
    return check(det, rows, state)


SAME, ORTHO = [1.0, 0.0, 0.01, 0.0], [0.0, 1.0, 0.0, 0.0]


def test_trigger_on_first_window_below_tau():
    det = _traced(drift_spec())
    tau = det.tau.item()
    assert 0.85 < tau < 0.95
    rows, state = torch.tensor([True]), rows_of(1)
    for _ in range(3):  # windows along the baseline: no trigger
        cosine, fired = _window(det, SAME, rows, state)
        assert cosine.item() > tau and not fired.item()
        assert state[0].pressure == 0
    cosine, fired = _window(det, ORTHO, rows, state)  # the first window around an orthogonal direction
    assert cosine.item() == pytest.approx(cos(ORTHO, det.center[0].tolist()), abs=1e-6)
    assert cosine.item() < tau and fired.item()
    assert det.current.abs().sum() == 0  # the window restarts


def test_pressure_with_two_triggers():
    det = _traced(drift_spec(triggers=2))
    rows, state = torch.tensor([True]), rows_of(1)
    fired, pressure = [], []
    for vec in (ORTHO, SAME, ORTHO, ORTHO, ORTHO, SAME, SAME):
        _, f = _window(det, vec, rows, state)
        fired.append(bool(f.item()))
        pressure.append(state[0].pressure)
    # below: +1, above: -1 (floor 0); 2 fires and resets
    assert fired == [False, False, False, True, False, False, False]
    assert pressure == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]


def test_rows_are_independent():
    det = _traced(drift_spec(), B=2)
    assert det.tau[0].item() == pytest.approx(det.tau[1].item(), abs=1e-7)
    both = torch.tensor([True, True])
    for _ in range(det.W):
        v = torch.tensor([ORTHO, SAME])[:, None, :]
        det.collect_decode(v, both)
    state = rows_of(2)
    cosine, fired = check(det, both, state)
    assert fired.tolist() == [True, False]
    # a check of row 1 only leaves row 0's window alone
    det.collect_decode(torch.tensor([ORTHO, ORTHO])[:, None, :], both)
    before = det.current[0].clone()
    check(det, torch.tensor([False, True]), state)
    assert torch.equal(det.current[0], before) and det.current[1].abs().sum() == 0
    det.clear_rows(torch.tensor([True, False]))
    assert math.isnan(det.tau[0].item()) and not math.isnan(det.tau[1].item())


# ------------------------------------------------------------------------------------------------ controller
LAYERS, INTER, HIDDEN = 2, 64, 32


class Signal:
    """Replaces the monitored attention output with scripted vectors: per row, a direction plus a small
    deterministic wobble (token counter modulo 3)."""

    def __init__(self, B):
        self.dirs = torch.zeros(B, HIDDEN)
        self.dirs[:, 0] = 1.0
        self.count = 0
        self.log: list[torch.Tensor] = []  # (B, T, D) per forward

    def set(self, b, axis):
        self.dirs[b] = 0.0
        self.dirs[b, axis] = 1.0

    def hook(self, module, args, output):
        x = output[0]
        B, T, D = x.shape
        v = self.dirs[:, None, :].repeat(1, T, 1)
        for t in range(T):
            v[:, t, 5] += 0.05 * ((self.count % 3) - 1)
            self.count += 1
        self.log.append(v.clone())
        return (v.to(x.dtype), *output[1:])


def _dense_forwards(c, b):
    return c.M[:, b].eq(1).all().item() and not c.has_mask[b]


@pytest.mark.parametrize("execution", ["masked", "compact"])
def test_controller_retraces_after_a_trigger(execution):
    m, W = 2, 5
    model = tiny_llama(layers=LAYERS, inter=INTER)
    sig = Signal(1)
    model.model.layers[-1].self_attn.register_forward_hook(sig.hook)  # before the controller's hook
    # the baseline phase before this project's defaults: up to forward m-1, one window enough (see the tests of
    # the published phase and of min_windows below)
    c = Controller(model, engine_spec(sparsity=0.5, masking_step=m, execution=execution,
                                     drift=drift_spec(window=W, phase="before_mask", min_windows=1))).attach()
    assert c.monitored == [LAYERS - 1]
    inputs: dict[int, list[torch.Tensor]] = {l: [] for l in range(LAYERS)}
    for l, f in enumerate(c.ffns):
        f.register_forward_pre_hook(lambda mod, args, l=l: inputs[l].append(args[0].detach().clone()))

    cache = DynamicCache()
    step = 0

    def forward(ids):
        nonlocal step
        model(input_ids=ids, past_key_values=cache, use_cache=True)
        step += 1

    forward(torch.tensor([[5, 17, 99, 3, 42, 77]]))  # forward 0 (trace)
    forward(torch.tensor([[11]]))  # forward 1 (trace); baseline from the 7 traced vectors
    traced = torch.cat(sig.log, dim=1)[0]
    assert traced.shape[0] == 7
    tau, center, _ = tau_by_hand(traced.tolist(), W)
    assert c.detector.center[0].tolist() == pytest.approx(center, abs=1e-6)
    assert c.detector.tau[0].item() == pytest.approx(tau, abs=1e-6)
    assert _dense_forwards(c, 0)
    for _ in range(5):  # forwards 2..6: masked, one window along the baseline -> no trigger
        forward(torch.tensor([[8]]))
        assert c.has_mask == [True]
    first_mask = c.masks().clone()
    assert not first_mask.all()
    assert len(c.counts.window_log) == 1 and c.counts.triggers == []
    window = torch.cat(sig.log[2:7], dim=1)[0].mean(0)
    assert c.counts.window_log[0]["cosine"] == pytest.approx(cos(window.tolist(), center), abs=1e-5)
    assert c.counts.window_log[0]["step"] == 6

    sig.set(0, 1)  # the topic changes: an orthogonal direction
    for s in range(7, 12):
        forward(torch.tensor([[9]]))
        if s < 11:
            assert c.has_mask == [True] and c.counts.triggers == []
    # forward 11 closed the second window below tau: trigger, mask dropped, statistics cleared
    assert [t["step"] for t in c.counts.triggers] == [11]
    assert c.counts.triggers[0]["cosine"] < c.counts.triggers[0]["threshold"]
    assert _dense_forwards(c, 0) and c.masks().all()
    assert c.stats.A.abs().sum() == 0

    # exactly m forwards run dense and re-trace (12, 13), with a new baseline from those tokens only
    n_before = {l: len(inputs[l]) for l in range(LAYERS)}
    order_during_retrace = c.order.clone()
    for s in (12, 13):
        forward(torch.tensor([[4 + s]]))
        assert _dense_forwards(c, 0), s
    retraced = torch.cat(sig.log[12:14], dim=1)[0]
    assert c.detector.center[0].tolist() == pytest.approx(retraced.mean(0).tolist(), abs=1e-6)
    assert c.detector.tau[0].item() == pytest.approx(0.9, abs=1e-6)  # 2 vectors < W: one window, cos 1
    # the statistics are sum a^2 over the re-trace tokens only (activations from the FFN inputs recorded)
    A = []
    for l, f in enumerate(c.ffns):
        xs = inputs[l][n_before[l] :]
        assert len(xs) == 2
        mlp = f.original
        A.append(sum((mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)).float().square().sum(dim=(0, 1)) for x in xs))
    A = torch.stack(A)  # physical order (the order the weights are in while re-tracing)
    assert torch.allclose(c.stats.A[:, 0], A, rtol=1e-5, atol=1e-6)
    A_orig = torch.zeros_like(A).scatter_(-1, order_during_retrace.long(), A)

    forward(torch.tensor([[30]]))  # forward 14 = restart + m: the new mask
    assert c.has_mask == [True]
    expected = torch.zeros_like(A_orig, dtype=torch.bool).scatter_(-1, A_orig.sqrt().topk(INTER // 2).indices, True)
    assert torch.equal(c.masks()[:, 0], expected)
    assert not torch.equal(c.masks(), first_mask)
    held = c.masks().clone()
    for _ in range(4):  # 15..18: the new mask is held; the window along the new baseline does not trigger
        forward(torch.tensor([[31]]))
        assert torch.equal(c.masks(), held)
    assert [e["step"] for e in c.counts.window_log] == [6, 11, 18]
    assert len(c.counts.triggers) == 1
    assert c.compacted == (execution == "compact")


def test_controller_drift_is_per_row():
    """Batch of two: only the row whose signal changes re-traces; the other keeps its mask."""
    model = tiny_llama(layers=LAYERS, inter=INTER)
    sig = Signal(2)
    model.model.layers[-1].self_attn.register_forward_hook(sig.hook)
    c = Controller(model, engine_spec(sparsity=0.5, masking_step=1,
                                     drift=drift_spec(window=3, phase="before_mask", min_windows=1))).attach()
    cache = DynamicCache()
    ids = torch.tensor([[5, 17, 99, 3], [6, 1, 2, 8]])
    model(input_ids=ids, past_key_values=cache, use_cache=True)  # forward 0: trace
    for _ in range(3):  # forwards 1..3: masked, window closes at 3
        model(input_ids=torch.tensor([[7], [7]]), past_key_values=cache, use_cache=True)
    assert c.has_mask == [True, True] and c.counts.triggers == []
    masks = c.masks().clone()
    sig.set(1, 2)
    for _ in range(3):  # forwards 4..6: row 1 drifts
        model(input_ids=torch.tensor([[7], [7]]), past_key_values=cache, use_cache=True)
    assert [(t["row"], t["step"]) for t in c.counts.triggers] == [(1, 6)]
    assert c.has_mask == [True, False]
    assert torch.equal(c.masks()[:, 0], masks[:, 0]) and c.masks()[:, 1].all()
    assert c.stats.A[:, 1].abs().sum() == 0 and c.stats.A[:, 0].abs().sum() > 0
    model(input_ids=torch.tensor([[7], [7]]), past_key_values=cache, use_cache=True)  # 7: row 1 re-traces (m = 1)
    assert c.has_mask == [True, False]
    model(input_ids=torch.tensor([[7], [7]]), past_key_values=cache, use_cache=True)  # 8: row 1's new mask
    assert c.has_mask == [True, True]
    assert torch.equal(c.masks()[:, 0], masks[:, 0]) and not c.masks()[:, 1].all()
