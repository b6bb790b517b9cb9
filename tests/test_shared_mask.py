"""strategy.batch_mask=shared: one kept set per layer for a batch, from the rows' normalised scores summed; a batch of
one row is exactly per_row; the shared set is rebuilt exactly when a row's mask would change (a re-trace) and given to
every row that holds masks; effective sparsity counts it; the compacted batch (one prefix, no per-row mask) equals
masked execution."""
from __future__ import annotations


import pytest
import torch
from transformers import DynamicCache

from tests.conftest import tiny_llama  # noqa: E402
from dart.compose import engine_spec  # noqa: E402
from dart.engine.controller import Controller  # noqa: E402
from dart.engine.masks import shared_mask  # noqa: E402

I = 64


def prompts(B, T=10, seed=0):
    return torch.randint(3, 128, (B, T), generator=torch.Generator().manual_seed(seed))


def decode(model, ids, steps=12, hook=None):
    """Prefill, then `steps` teacher-forced single-token forwards of fixed tokens; per forward the logits."""
    cache = DynamicCache()
    out = [model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1]]
    g = torch.Generator().manual_seed(9)
    for k in range(steps):
        tok = torch.randint(3, 128, (ids.shape[0], 1), generator=g)
        out.append(model(input_ids=tok, past_key_values=cache, use_cache=True).logits[:, -1])
        if hook is not None:
            hook(k + 1)
    return torch.stack(out, 1)


def attach(model, **kw):
    drift = kw.pop("drift", {"enabled": False})
    return Controller(model, engine_spec(sparsity=0.5, masking_step=1, drift=drift, **kw)).attach()


@pytest.mark.parametrize("execution", ["masked", "compact"])
def test_one_row_is_per_row(execution):
    outs = {}
    for mode in ("per_row", "shared"):
        model = tiny_llama()
        c = attach(model, batch_mask=mode, execution=execution)
        outs[mode] = (decode(model, prompts(1)), c.masks().clone(), c.effective()["decode"])
    assert torch.equal(outs["per_row"][0], outs["shared"][0]) and torch.equal(outs["per_row"][1], outs["shared"][1])
    assert outs["per_row"][2] == outs["shared"][2]


def test_the_shared_set_by_hand():
    """The rows' scores, each divided by its mean, summed; top-k with the per-row count (or shared_keep)."""
    model = tiny_llama()
    c = attach(model, batch_mask="shared")
    ids = prompts(3)
    cache = DynamicCache()
    model(input_ids=ids, past_key_values=cache, use_cache=True)
    base = c.stats.base().clone()  # (L, B, I): ||a_j|| of each row's prompt (magnitude ranking)
    model(input_ids=ids[:, :1], past_key_values=cache, use_cache=True)  # forward 1 builds the masks
    total = (base / base.mean(-1, keepdim=True)).sum(1)
    want = torch.zeros(c.L, I, dtype=torch.bool).scatter_(-1, total.topk(I // 2, dim=-1).indices, True)
    got = c.masks()
    assert all(torch.equal(got[:, b], want) for b in range(3))
    assert torch.equal(shared_mask(base, [I // 2] * c.L, torch.ones(3, dtype=torch.bool), I, None), want)
    wider = shared_mask(base, [I // 2] * c.L, torch.ones(3, dtype=torch.bool), I, 0.75)
    assert wider.sum(-1).eq(48).all() and (wider | ~want).all()  # the 48 best contain the 32 best


def test_rebuilt_exactly_when_a_row_retraces():
    """Row 1's window closing at forward 6 fires (scripted): it re-traces 7..11 (5 tokens), rebuilds at 12, and at
    that build every row takes the new shared set; between builds nothing changes; the other rows keep pruning with
    the old set meanwhile."""
    model = tiny_llama()
    c = attach(model, batch_mask="shared", retrace_tokens=5,
               drift={"enabled": True, "window": 5, "min_windows": 1, "phase": "published"})
    history = {}

    def hook(step):
        history[step] = (c.masks().clone(), list(c.has_mask))

    press = c.schedule.press
    c.schedule.press = lambda row, below: press(row, c.step == 6 and row is c.rows[1])  # row 1 fires at 6, once
    ids = prompts(3)
    decode(model, ids, steps=14, hook=hook)
    assert [(t["row"], t["step"]) for t in c.counts.triggers] == [(1, 6)]
    assert [history[s][1] for s in (5, 6, 11, 12)] == [[True] * 3, [True, False, True], [True, False, True], [True] * 3]
    before, after = history[5][0], history[12][0]
    # during the re-trace (7..11) the rows that fired hold no mask; every masked row holds the same set
    for step in range(1, 15):
        masks, has = history[step]
        held = [masks[:, b] for b in range(3) if has[b]]
        assert all(torch.equal(m, held[0]) for m in held), step
    assert all(torch.equal(history[s][0], before) for s in range(1, 6))
    for s in range(6, 12):  # rows 0 and 2 keep the old set while row 1 re-traces (all ones)
        assert torch.equal(history[s][0][:, 0], before[:, 0]) and history[s][0][:, 1].all()
    assert all(torch.equal(history[s][0], after) for s in range(12, 15))
    assert not torch.equal(before[:, 0], after[:, 0])


def test_effective_sparsity_counts_the_shared_set():
    model = tiny_llama()
    c = attach(model, batch_mask="shared", shared_keep=0.75)
    decode(model, prompts(4), steps=10)
    eff = c.effective()
    assert eff["tokens"]["decode"] == 40 and eff["dense_tokens"]["decode"] == 0
    assert eff["decode"] == pytest.approx(0.25, abs=1e-12)  # every row keeps 48 of 64 in every layer


def test_compacted_shared_equals_masked():
    outs = {}
    for execution in ("masked", "compact"):
        model = tiny_llama()
        c = attach(model, batch_mask="shared", execution=execution, union_max_keep=1.0)
        outs[execution] = (decode(model, prompts(4)), c.compacted, c.union.rows_differ())
    assert (outs["compact"][0] - outs["masked"][0]).abs().max() <= 1e-5
    assert outs["compact"][1:] == (True, False)  # one prefix, no per-row mask inside it


@pytest.mark.parametrize("spec", [
    dict(),  # the detector (W = 5), natural triggers at a threshold with no margin
    dict(published_quirks=True),  # a trigger resets its row inside the forward that closes the window
    dict(release_step=23),
    dict(execution="compact", union_max_keep=1.0),
])
def test_chunked_lockstep_equals_one_forward_per_token(spec):
    """A shared-mask batch teacher-forced in lockstep: the tokens between two changes of the schedule in one forward
    (Stepper.steady) give the logits, drift checks, triggers, effective sparsity and generated-token bytes of one
    forward per token (the reference), in fewer forwards."""
    from dart.engine.forcing import _lockstep

    model = tiny_llama()
    drift = {"enabled": True, "window": 5, "min_windows": 1, "sigma_scale": 0.0, "min_margin": 0.0}
    g = torch.Generator().manual_seed(3)
    prefixes = [torch.randint(3, 128, (9,), generator=g).tolist() for _ in range(3)]
    forced = [torch.randint(3, 128, (40,), generator=g).tolist() for _ in range(3)]
    runs = {}
    for chunked in (False, True):
        c = attach(model, batch_mask="shared", retrace_tokens=3, drift=drift, **spec)
        out, calls = {}, []
        handle = model.register_forward_pre_hook(lambda *a: calls.append(1))

        def take(rows, j0, logits):
            for t in range(logits.shape[1]):
                out[j0 + t] = logits[:, t].float().log_softmax(-1)

        try:
            _lockstep(model, prefixes, forced, [0, 1, 2], take, False, chunked=chunked)
        finally:
            handle.remove()
            c.detach()
        eff = c.effective()
        runs[chunked] = (out, [(e["row"], e["step"], round(e["cosine"], 4)) for e in c.counts.window_log],
                         [(t["row"], t["step"]) for t in c.counts.triggers], eff["decode"], c.tally.gen_ffn_bytes,
                         c.tally.gen_tokens, len(calls))
    ref, got = runs[False], runs[True]
    assert sorted(got[0]) == sorted(ref[0]) == list(range(-1, 40))
    assert max(float((ref[0][j] - got[0][j]).abs().max()) for j in ref[0]) < 1e-4
    assert got[1] == ref[1] and got[2] == ref[2]
    assert got[3] == pytest.approx(ref[3], abs=1e-9) and got[4:6] == ref[4:6]
    if "release_step" not in spec:
        assert ref[2], "the reference run should re-trace at least once"
    assert ref[6] == 41 and got[6] <= 0.7 * ref[6], (got[6], ref[6])  # W = 5: at best 2 forwards per window
