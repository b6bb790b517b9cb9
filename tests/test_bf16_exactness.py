"""The exactness claims that matter, in bfloat16 (what dtype=auto runs on a CPU with native bf16, and on GPUs): chunked
teacher forcing == token-by-token decoding, batch 8 == 8 x batch 1, compacted == masked execution, on tiny random
models converted to bf16.

The decisions must be identical: the masks, the drift checks and the triggers. The logits may not be bit-identical:
kernels of different shapes (a chunk against one token, a batch against one row, a compacted matrix against a masked
one) accumulate in different orders, and bf16 keeps 8 significant bits, so an intermediate activation can round one
step (2^-8 of its magnitude) differently, and a one-step difference grows through the layers by a few steps. These
tiny models' logits are below 1 in magnitude (one step: at most 2^-8 ~ 0.004). Measured worst log-prob difference:
0.021 (GPT-2, chunked forcing with four scripted triggers), 0.002 elsewhere, 0 for compacted vs masked. Tolerance:
BF16_TOL = 0.05 (12 steps), where the fp32 tests of the same paths hold 1e-4. A tolerance on logits alone could hide
a wrong mask on these tiny models (pruning half the neurons moves a random GPT-2's logits by only 0.03-0.07), which
is why every test here also asserts the masks, triggers and tokens to be identical.
"""
from __future__ import annotations

import pytest
import torch

from dart.compose import drift_spec, engine_spec
from dart.engine.controller import Controller
from tests import test_engine_batch as batch_tests
from tests import test_engine_execution as exec_tests
from tests.conftest import MODEL_BUILDERS
from tests.test_engine_forcing import SCRIPTS, attach, checks, collect, mark, work

BF16_TOL = 0.05


@pytest.fixture(autouse=True)
def _priors_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DART_CACHE", str(tmp_path / "cache"))


def worst(a: dict, b: dict) -> float:
    assert {r: sorted(v) for r, v in a.items()} == {r: sorted(v) for r, v in b.items()}
    return max(float((a[r][j] - b[r][j]).abs().max()) for r in a for j in a[r])


@pytest.mark.parametrize("arch", sorted(MODEL_BUILDERS))
@pytest.mark.parametrize("triggers", ["scripted", "natural"])
def test_chunked_equals_token_by_token_in_bf16(arch, triggers):
    model = MODEL_BUILDERS[arch]().to(torch.bfloat16)
    if triggers == "scripted":
        c = attach(model, masking_step=1)
        c.detector.fire_steps, expected = SCRIPTS["several"]
        prefixes, forced, group = work(forced_lens=(3, 30), group=(0, 1))
    else:
        c = attach(model, masking_step=2, drift=dict(sigma_scale=0.0, min_margin=0.0))
        prefixes, forced, group = work(forced_lens=(3, 30, 17, 0, 61))
    n0 = mark(c)
    ref = collect(model, prefixes, forced, group, "reference")
    ref_checks = checks(c, n0)
    n1 = mark(c)
    got = collect(model, prefixes, forced, group, "chunked")
    assert checks(c, n1) == ref_checks  # the same windows checked, the same triggers
    fired = [(row, step) for row, step, f in ref_checks if f]
    assert fired == expected if triggers == "scripted" else len(fired) >= 4
    assert worst(ref, got) < BF16_TOL


@pytest.mark.parametrize("arch", sorted(batch_tests.BUILDERS))
@pytest.mark.parametrize("name", ["l2_m2", "ema_m3", "auto_m1"])
def test_batch_equals_single_in_bf16(arch, name):
    rows = batch_tests.prompts()
    model = batch_tests.build(arch).to(torch.bfloat16)
    c = Controller(model, engine_spec(**batch_tests.SPECS[name])).attach()
    ids, mask = batch_tests.left_pad(rows)
    together = batch_tests.generate(model, ids, mask, 9).float()
    masks = c.masks().clone()
    triggers = sorted((t["row"], t["step"]) for t in c.counts.triggers)
    alone_triggers = []
    for i, r in enumerate(rows):
        c.counts.triggers.clear()
        alone = batch_tests.generate(model, r[None], torch.ones(1, len(r), dtype=torch.long), 9).float()
        assert torch.equal(c.masks()[:, 0], masks[:, i]), i
        assert (alone[0] - together[i]).abs().max().item() < BF16_TOL, i
        alone_triggers += [(i, t["step"]) for t in c.counts.triggers]
    assert sorted(alone_triggers) == triggers


@pytest.mark.parametrize("arch", sorted(exec_tests.BUILDERS))
def test_compacted_equals_masked_in_bf16(arch):
    runs = {}
    for execution in ("masked", "compact"):
        model = exec_tests.build(arch).to(torch.bfloat16)
        c = Controller(model, engine_spec(sparsity=0.5, masking_step=2, ranking="max", execution=execution)).attach()
        logits, seq = exec_tests.generate(model, exec_tests.PROMPT, 12)
        runs[execution] = (logits.float(), seq, c.masks().clone(), c.compacted)
    (lm, sm, mm, cm), (lc, sc, mc, cc) = runs["masked"], runs["compact"]
    assert not cm and cc  # the second really ran compacted
    assert torch.equal(mm, mc) and torch.equal(sm, sc)
    assert (lm - lc).abs().max().item() < BF16_TOL
    dense, _ = exec_tests.generate(exec_tests.build(arch).to(torch.bfloat16), exec_tests.PROMPT, 12)
    moved = (dense.float()[:, 2:] - lm[:, 2:]).abs().amax(-1).max().item()  # what the mask does to the logits
    assert moved > 0.02 and moved > 10 * (lm - lc).abs().max().item()


def test_statistics_stay_fp32_in_a_bf16_model():
    model = MODEL_BUILDERS["llama"]().to(torch.bfloat16)
    c = Controller(model, engine_spec(sparsity=0.5, masking_step=1, drift=drift_spec())).attach()
    model(torch.tensor([[5, 17, 99, 3, 42]]))
    parts = [p for _, _, p in c.stats.A.groups()]
    assert parts and all(p.dtype == torch.float32 for p in parts)
    assert all(p.abs().sum() > 0 for p in parts)  # the prefill was traced into them
