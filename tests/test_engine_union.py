"""Union compaction (dart.engine.union): a batch runs the union of its rows' kept neurons as a contiguous prefix,
each row masked inside it. It must equal per-row masked execution: different masks, identical masks, masks with
no overlap, through re-traces (natural and scripted drift triggers), on tiny Llama, GPT-2 and GPT-NeoX, and on
the real SmolLM2 (integration)."""
from __future__ import annotations


import pytest
import torch

from tests.conftest import MODEL_BUILDERS  # noqa: E402
from dart.engine import union  # noqa: E402
from dart.engine.controller import Controller  # noqa: E402
from dart.engine.ffn import PrunableFFN  # noqa: E402
from dart.bench.lean import LeanDecoder  # noqa: E402
from dart.compose import auto_spec, build_strategy, drift_spec, engine_spec  # noqa: E402
from dart.errors import ConfigError  # noqa: E402

ARCHS = sorted(MODEL_BUILDERS)


@pytest.fixture(autouse=True)
def _priors_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DART_CACHE", str(tmp_path / "cache"))


def build(arch):
    model = MODEL_BUILDERS[arch](layers=2)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def prompts(B=3, T=9, seed=0):
    return torch.randint(3, 128, (B, T), generator=torch.Generator().manual_seed(seed))


class Counter:
    """Counts, per forward, how the FFNs ran: union (prefix + per-row masks), prefix only, or full width."""

    def __init__(self, c: Controller):
        self.c, self.union, self.prefix, self.full = c, 0, 0, 0
        original = PrunableFFN.compacted
        counter = self

        def compacted(ffn, x, k, rows=None):
            if ffn.index == 0:
                if rows is None:
                    counter.prefix += 1
                else:
                    counter.union += 1
            return original(ffn, x, k, rows)

        self.patch = pytest.MonkeyPatch()
        self.patch.setattr(PrunableFFN, "compacted", compacted)

    def close(self):
        self.patch.undo()


def run(arch, ids, n=16, fire_steps=None, mask_hook=None, **spec):
    """Greedy generate() with the engine; returns logits (B, n, V), tokens, triggers, controller, counter."""
    model = build(arch)
    spec.setdefault("drift", drift_spec(enabled=False))
    c = Controller(model, engine_spec(**spec)).attach()
    if fire_steps is not None:
        c.detector.fire_steps = set(fire_steps)
    if mask_hook is not None:
        build_masks = c.build

        def hooked(rows, layer=None):
            build_masks(rows, layer)
            mask_hook(c, rows)

        c.build = hooked
    count = Counter(c)
    try:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    finally:
        count.close()
    trig = [(t["row"], t["step"]) for t in c.counts.triggers]
    return torch.stack(out.logits, dim=1), out.sequences, trig, c, count


def physical(c: Controller, masks_orig: torch.Tensor) -> torch.Tensor:
    """(L, B, I) masks in the original neuron order -> the controller's physical order."""
    return masks_orig.gather(-1, c.order.long()[:, None, :].expand_as(masks_orig))


@pytest.mark.parametrize("arch", ARCHS)
def test_union_of_different_masks_equals_masked(arch):
    ids = prompts()
    lm, sm, _, cm, _ = run(arch, ids, execution="masked", sparsity=0.5, masking_step=2)
    lu, su, _, cu, count = run(arch, ids, execution="compact", sparsity=0.5, masking_step=2)
    assert torch.equal(sm, su)
    assert (lm - lu).abs().max() <= 1e-5
    dense = build(arch).generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
    assert (lm[:, 2] - dense.logits[2]).abs().max() > 1e-3  # the masks really prune
    masks = cu.masks()  # original order
    assert torch.equal(masks, cm.masks())
    kept = masks.any(dim=1)  # (L, I): the union
    assert not torch.equal(masks[:, 0], masks[:, 1])  # the rows' masks differ
    assert cu.compacted and cu.kept_prefix == kept.sum(-1).tolist()
    assert 0.5 < sum(cu.kept_prefix) / (cu.L * cu.I) < 1.0  # larger than one row's, smaller than dense
    assert cu.union.keep() == pytest.approx(sum(cu.kept_prefix) / (cu.L * cu.I))
    # physical order: the union is a prefix, each row's mask lies inside it
    for l, k in enumerate(cu.kept_prefix):
        assert (cu.M[l, :, :k] > 0.5).any(dim=0).all() and cu.M[l, :, k:].eq(0).all()
    assert cu.union.rows_differ()
    # forward 2 builds the masks; forwards 2..15 ran the union prefix with per-row masks, none without them
    assert count.union == 14 and count.prefix == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_identical_masks_share_one_prefix_without_row_masks(arch):
    one = prompts(B=1)
    ids = one.repeat(3, 1)
    lu, su, _, cu, count = run(arch, ids, execution="compact", sparsity=0.5, masking_step=2)
    l1, s1, _, c1, _ = run(arch, one, execution="compact", sparsity=0.5, masking_step=2)
    lm, _, _, _, _ = run(arch, ids, execution="masked", sparsity=0.5, masking_step=2)
    assert cu.compacted and cu.kept_prefix == [cu.I // 2] * cu.L == c1.kept_prefix
    assert not cu.union.rows_differ() and cu.union.keep() == 0.5
    assert count.prefix == 14 and count.union == 0  # no per-row multiply: the prefix is every row's mask
    assert (lu - lm).abs().max() <= 1e-5 and (lu - l1.expand_as(lu)).abs().max() <= 1e-5
    assert torch.equal(su, s1.expand_as(su))


def disjoint(c, rows):
    """Overwrite the built masks: row b keeps original neurons [b*I/4, (b+1)*I/4) (no overlap; union I/2 for 2 rows)."""
    I, B = c.I, c.B
    orig = torch.zeros(c.L, B, I, dtype=c.dtype)
    for b in range(B):
        orig[:, b, b * I // (2 * B): (b + 1) * I // (2 * B)] = 1
    new = torch.where(rows[None, :, None], physical(c, orig), c.M.gather())
    for l in range(c.L):
        c.M[l] = new[l]


@pytest.mark.parametrize("arch", ARCHS)
def test_masks_with_an_empty_overlap(arch):
    ids = prompts(B=2)
    lm, sm, _, cm, _ = run(arch, ids, execution="masked", masking_step=1, mask_hook=disjoint)
    lu, su, _, cu, count = run(arch, ids, execution="compact", masking_step=1, mask_hook=disjoint)
    m = cu.masks()
    assert not (m[:, 0] & m[:, 1]).any() and m.sum(-1).eq(cu.I // 4).all()
    assert cu.kept_prefix == [cu.I // 2] * cu.L and cu.union.rows_differ() and count.union == 15
    assert torch.equal(sm, su) and (lm - lu).abs().max() <= 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_union_through_natural_re_traces(arch):
    """A threshold at the baseline's mean (margin 0): rows re-trace again and again, at different steps; forwards
    with a re-tracing (dense) row run masked, the others on the union recomputed after each rebuild."""
    ids = prompts(B=3, T=7, seed=3)
    drift = drift_spec(window=3, sigma_scale=0.0, min_margin=0.0)
    lm, sm, tm, _, _ = run(arch, ids, n=30, execution="masked", sparsity=0.6, masking_step=2, drift=drift)
    lu, su, tu, cu, count = run(arch, ids, n=30, execution="compact", sparsity=0.6, masking_step=2, drift=drift)
    assert tm == tu and len(tm) >= 3
    assert torch.equal(sm, su) and (lm - lu).abs().max() <= 1e-5
    assert count.union >= 3  # some forwards ran the union
    assert count.union + count.prefix < 28  # and some ran masked (a row re-tracing)


@pytest.mark.parametrize("arch", ARCHS)
def test_union_through_scripted_re_traces(arch):
    """fire_steps: every row's window closing at forward 5 or 11 fires. m = 1, W = 5: the masks are built at forward
    1, the first window closes at 5 and fires; forward 6 re-traces, 7 rebuilds (a new union, re-permuted), the
    next window closes at 11 and fires; 12 re-traces, 13 rebuilds. (The detector's baseline as first published
    for this timeline: before the mask, one window enough.)"""
    ids = prompts(B=3, T=6, seed=4)
    drift = drift_spec(window=5, phase="before_mask", min_windows=1)
    kw = dict(n=24, sparsity=0.5, masking_step=1, drift=drift, fire_steps={5, 11})
    lm, sm, tm, _, _ = run(arch, ids, execution="masked", **kw)
    moves = []
    original = union.Union.move
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(union.Union, "move", lambda u, m: (moves.append(sum(d.numel() for d, _ in m)), original(u, m)))
        lu, su, tu, cu, count = run(arch, ids, execution="compact", **kw)
    assert tm == tu and sorted({s for _, s in tm}) == [5, 11]
    assert torch.equal(sm, su) and (lm - lu).abs().max() <= 1e-5
    assert len(moves) == 3  # the first masks, and the rebuilds after each trigger
    assert 0 < moves[1] < cu.L * cu.I  # a rebuild moves only the neurons that enter or leave the union
    # forwards 1..23: all masked except 6 and 12 (every row re-traces after a trigger), each on the union
    assert count.union == 21


def test_threshold_falls_back_to_masked_and_compact_ignores_it():
    ids = prompts()
    ref, *_ = run("llama", ids, execution="masked", sparsity=0.5, masking_step=2)
    for execution, max_keep, expect in (("auto", 0.6, False), ("auto", 0.9, True), ("auto", 1.0, True),
                                        ("compact", 0.6, True)):
        lu, _, _, c, count = run("llama", ids, execution=execution, union_max_keep=max_keep, sparsity=0.5, masking_step=2)
        keep = c.union.keep()
        assert 0.6 < keep < 0.9, keep  # the rows' union of 50% masks
        assert c.compacted == expect and count.union == (14 if expect else 0)
        assert c.order.equal(torch.arange(c.I, dtype=torch.int32).repeat(c.L, 1)) != expect  # masked: nothing moved
        assert (lu - ref).abs().max() <= 1e-5


def test_union_max_keep_is_validated():
    for bad in (0.0, -0.1, 1.5, "x", None):
        with pytest.raises(ConfigError, match="union_max_keep"):
            engine_spec(union_max_keep=bad).validate()
    assert engine_spec(union_max_keep=1.0).validate().union_max_keep == 1.0


def test_strategy_config_reaches_the_engine():
    for name in ("dart", "static_prompt", "griffin"):
        assert build_strategy(name, union_max_keep=0.7).spec.union_max_keep == 0.7
    with pytest.raises(ConfigError, match="union_max_keep"):
        build_strategy("dart", union_max_keep=2)


def test_fixed_masks_run_batches_on_their_prefix():
    """strategy=static: every row holds the same fixed mask, already the prefix: a batch runs it compacted."""
    gen = torch.Generator().manual_seed(0)
    fixed = torch.rand(2, 64, generator=gen).argsort(-1) < 20  # (L, I), 20 kept per layer
    ids = prompts(B=3)
    outs = {}
    for execution in ("auto", "masked"):
        c = Controller(build("llama"), engine_spec(drift=drift_spec(enabled=False), execution=execution), fixed_masks=fixed)
        c.attach()
        count = Counter(c)
        try:
            outs[execution] = (c.model(ids).logits, count.prefix, count.union)
        finally:
            count.close()
    assert outs["auto"][1:] == (1, 0) and outs["masked"][1:] == (0, 0)
    assert (outs["auto"][0] - outs["masked"][0]).abs().max() <= 1e-5


def test_lean_loop_runs_the_union():
    ids = prompts(B=4, T=8, seed=7)
    model = build("llama")
    out = {}
    for execution in ("masked", "compact"):
        c = Controller(model, engine_spec(sparsity=0.7, masking_step=1, execution=execution,
                                         drift=drift_spec(window=3, sigma_scale=0.0, min_margin=0.0))).attach()
        count = Counter(c)
        try:
            dec = LeanDecoder(model, 40, batch=4, controller=c)
            tokens = dec.generate(ids, 24)
            logits = dec.forward(tokens[:, -1:], 8 + 24 - 1)
        finally:
            count.close()
        out[execution] = (tokens, logits, [(t["row"], t["step"]) for t in c.counts.triggers], count.union)
        c.detach()
    assert torch.equal(out["masked"][0], out["compact"][0]) and out["masked"][2] == out["compact"][2]
    assert (out["masked"][1] - out["compact"][1]).abs().max() <= 1e-5
    assert out["masked"][3] == 0 and out["compact"][3] > 0


# ------------------------------------------------------------------------------------ the real model
@pytest.fixture(scope="module")
def smollm2():
    from omegaconf import OmegaConf

    from dart.models.loading import load_model

    loaded = load_model(OmegaConf.load("conf/model/smollm2_135m.yaml"), device="cpu", dtype="float32")
    return loaded.model, loaded.tokenizer


def _lean(model, ids, new, fire_steps=None, masks=None, **spec):
    """Greedy lean decoding with the engine: the logits of every decode step (B, new - 1, V), the triggers, the
    union's keep fraction and whether the batch ended compacted. `masks`: a list that receives the masks (original
    order) after every build; if it already holds them, each build's masks are replaced by the recorded ones."""
    c = Controller(model, engine_spec(**spec)).attach()
    if masks is not None:
        replay, build_masks, n = bool(masks), c.build, [0]

        def hooked(rows, layer=None):
            build_masks(rows, layer)
            if replay:  # the same masks as the reference run (its statistics differ in the last bits: near-ties)
                c.M[:] = torch.where(rows[None, :, None], physical(c, masks[n[0]].to(c.dtype)), c.M.gather())
            else:
                masks.append(c.masks().clone())
            n[0] += 1

        c.build = hooked
    try:
        if fire_steps is not None:
            c.detector.fire_steps = set(fire_steps)
        dec = LeanDecoder(model, ids.shape[1] + new, batch=ids.shape[0], controller=c)
        steps, pos = [], ids.shape[1]
        tok = dec.forward(ids, 0)[:, -1].argmax(-1, keepdim=True)
        for _ in range(new - 1):
            logits = dec.forward(tok, pos)[:, -1]
            steps.append(logits)
            tok = logits.argmax(-1, keepdim=True)
            pos += 1
        return torch.stack(steps, 1), [(t["row"], t["step"]) for t in c.counts.triggers], c.union.keep(), c.compacted
    finally:
        c.detach()


@pytest.mark.integration
@pytest.mark.parametrize("case", ["different", "identical", "retrace"])
def test_smollm2_union_equals_masked(smollm2, case):
    from dart.bench.decode import prompt_ids

    model, tok = smollm2
    ids = prompt_ids(tok, 4, 32, "cpu")  # four news stories
    if case == "identical":
        ids = ids[:1].repeat(4, 1)
    kw = dict(sparsity=0.7, masking_step=1, drift=drift_spec(enabled=False))
    if case == "retrace":
        kw.update(drift=drift_spec(window=3, phase="before_mask", min_windows=1), fire_steps={3, 10})  # 3; 7, 10; 14
    masks = []
    lm, tm, _, _ = _lean(model, ids, 14, execution="masked", masks=masks, **kw)
    lu, tu, keep, compacted = _lean(model, ids, 14, execution="compact", masks=masks, **kw)
    assert len(masks) == (3 if case == "retrace" else 1)  # builds at forward 1 (and 5, 12 after the triggers)
    assert tm == tu
    if case == "retrace":
        assert sorted({s for _, s in tm}) == [3, 10]
    assert compacted and (keep == 460 / 1536 if case == "identical" else 460 / 1536 < keep < 1.0)  # floor(0.3 I)
    err = float((lm - lu).abs().max())
    assert err <= 1e-4 * float(lm.abs().max()), err
    assert torch.equal(lm.argmax(-1), lu.argmax(-1))
