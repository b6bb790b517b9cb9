"""Batch size must not change results (docs/method.md section 6): per-row statistics, masks and drift state.

generate() with 8 left-padded prompts of different lengths vs 8 runs at batch 1, and Controller.score() (one
forward per request, right padding, per-row prompt length) at batch 8 vs 8 x batch 1."""
from __future__ import annotations


import pytest
import torch

from tests.conftest import tiny_gpt2, tiny_llama  # noqa: E402
from dart.engine.allocation import auto_prune_fractions, keep_from_prune  # noqa: E402
from dart.engine.controller import Controller  # noqa: E402
from dart.compose import auto_spec, drift_spec, engine_spec  # noqa: E402

BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
LENS = [3, 5, 8, 4, 6, 7, 2, 5]
CONT = [2, 1, 3, 4, 1, 2, 3, 2]


@pytest.fixture(autouse=True)
def _priors_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DART_CACHE", str(tmp_path / "cache"))


def prompts(seed=1, lens=LENS):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 128, (n,), generator=g) for n in lens]


def build(arch, layers=2):
    model = BUILDERS[arch](layers=layers)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def left_pad(rows):
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r) :] = r
        mask[i, T - len(r) :] = 1
    return ids, mask


def right_pad(rows):
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def generate(model, ids, mask, n):
    out = model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, output_logits=True,
                         return_dict_in_generate=True)
    return torch.stack(out.logits, dim=1)


SPECS = {
    "l2_m2": dict(sparsity=0.5, masking_step=2, ranking="max", drift=drift_spec(window=3)),
    "ema_m3": dict(sparsity=0.6, masking_step=3, ema_decay=0.8, drift=drift_spec(window=2)),
    "auto_m1": dict(sparsity=0.5, masking_step=1, allocation="auto", drift=drift_spec(window=3)),
    "compat_mean": dict(masking_step=0, protocol="compat", mask_rule="mean", drift=drift_spec(window=3)),
}


@pytest.mark.parametrize("arch", sorted(BUILDERS))
@pytest.mark.parametrize("name", sorted(SPECS))
def test_generate_batch_equals_single(arch, name):
    spec = engine_spec(**SPECS[name])
    rows = prompts()
    n = 9
    model = build(arch)
    c = Controller(model, spec).attach()
    ids, mask = left_pad(rows)
    batch_logits = generate(model, ids, mask, n)
    batch_masks = c.masks().clone()
    batch_triggers = sorted((t["row"], t["step"]) for t in c.counts.triggers)
    batch_has_mask = list(c.has_mask)  # False where a drift trigger left the row re-tracing
    batch_windows = sorted((e["row"], e["step"], round(e["cosine"], 4)) for e in c.counts.window_log)
    assert batch_masks.shape == (2, 8, 64)
    singles, windows = [], []
    for i, r in enumerate(rows):
        c.counts.triggers.clear()
        c.counts.window_log.clear()
        logits = generate(model, r[None], torch.ones(1, len(r), dtype=torch.long), n)
        assert (logits[0] - batch_logits[i]).abs().max().item() <= 1e-4, i
        assert torch.equal(c.masks()[:, 0], batch_masks[:, i]), i
        assert c.has_mask[0] == batch_has_mask[i], i
        singles += [(i, t["step"]) for t in c.counts.triggers]
        windows += [(i, e["step"], round(e["cosine"], 4)) for e in c.counts.window_log]
    assert sorted(singles) == batch_triggers  # the same drift triggers, at the same steps
    assert sorted(windows) == batch_windows and len(windows) > 0
    # masks differ between rows (they are per sequence), and prune what they should
    assert not all(torch.equal(batch_masks[:, 0], batch_masks[:, i]) for i in range(1, 8))
    held = torch.tensor(batch_has_mask)
    if name == "l2_m2":
        assert batch_masks[:, held].sum(-1).eq(32).all()


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_generate_auto_allocation_counts(arch):
    """allocation=auto in generate (m = 1, no drift): row b keeps k_bl = round((1 - p_bl) I) neurons in layer l,
    p from auto_prune_fractions of that row's prefill alignment S_b -- measured here on a fresh controller
    that only ran the prefill."""
    spec = engine_spec(sparsity=0.5, masking_step=1, allocation="auto", drift=drift_spec(enabled=False))
    ids, mask = left_pad(prompts())
    model = build(arch, layers=4)
    c = Controller(model, spec).attach()
    generate(model, ids, mask, 3)
    counts = c.masks().sum(-1).T  # (B, L)
    probe = build(arch, layers=4)
    c2 = Controller(probe, spec).attach()
    generate(probe, ids, mask, 1)  # the prefill only (generate sets GPT-2's positions from the padding)
    S = c2.stats.layer_alignment()  # (B, L)
    assert S.shape == (8, 4) and torch.isfinite(S).all() and (S > 0).all()
    p = auto_prune_fractions(S, 0.5, spec.auto)
    assert p.double().mean(1).tolist() == pytest.approx([0.5] * 8, abs=1e-6)
    assert torch.equal(counts, keep_from_prune(p, 64))
    assert counts.float().mean(1).sub(32).abs().max() <= 0.5  # the mean keep meets the target (rounding aside)
    assert not counts.eq(counts[0, 0]).all()


SCORE_SPECS = {
    "causal_m1": dict(sparsity=0.5, masking_step=1, drift=drift_spec(enabled=False)),
    "causal_m2_ema": dict(sparsity=0.5, masking_step=2, ema_decay=0.7, ranking="product", drift=drift_spec(enabled=False)),
    "compat": dict(sparsity=0.5, masking_step=0, protocol="compat", drift=drift_spec(enabled=False)),
    "compat_ema": dict(sparsity=0.5, masking_step=0, protocol="compat", ema_decay=0.7, drift=drift_spec(enabled=False)),
    "auto_causal": dict(sparsity=0.5, masking_step=1, allocation="auto", drift=drift_spec(enabled=False)),
    "auto_compat": dict(sparsity=0.7, masking_step=0, protocol="compat", allocation="auto", published_quirks=True,
                        drift=drift_spec(enabled=False)),
    "griffin": dict(sparsity=0.5, masking_step=1, statistic="griffin", drift=drift_spec(enabled=False)),
}


@pytest.mark.parametrize("arch", sorted(BUILDERS))
@pytest.mark.parametrize("name", sorted(SCORE_SPECS))
def test_score_batch_equals_single(arch, name):
    spec = engine_spec(**SCORE_SPECS[name])
    ctx = prompts(seed=2)
    cont = prompts(seed=3, lens=CONT)
    rows = [torch.cat([a, b]) for a, b in zip(ctx, cont)]
    prompt_len = torch.tensor([len(a) for a in ctx])
    model = build(arch, layers=3)
    c = Controller(model, spec).attach()
    ids, mask = right_pad(rows)
    batch = c.score(model, ids, prompt_len, attention_mask=mask)
    batch_masks = c.masks().clone()
    assert c.has_mask == [True] * 8
    for i, r in enumerate(rows):
        single = c.score(model, r[None], prompt_len[i : i + 1])
        n = len(r)
        assert (single[0] - batch[i, :n]).abs().max().item() <= 1e-4, i
        assert torch.equal(c.masks()[:, 0], batch_masks[:, i]), i
    if name == "auto_causal":  # per-row, per-layer counts from the depth-aware allocation
        counts = batch_masks.sum(-1)  # (L, B)
        assert not counts.eq(counts[0, 0]).all()
        assert counts.float().mean(0).sub(64 * (1 - spec.sparsity)).abs().max() <= 1.0  # mean keep ~ target
    elif name == "auto_compat":  # the published quirk: layer 0 is built with the last layer's count
        counts = batch_masks.sum(-1)
        assert not counts.eq(counts[0, 0]).all() and torch.equal(counts[0], counts[-1])
    elif name == "compat" or name.startswith("causal") or name == "griffin":
        assert batch_masks.sum(-1).eq(32).all()
