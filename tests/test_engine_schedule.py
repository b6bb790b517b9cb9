"""The controller's schedule (docs/method.md sections 2 and 6) on a tiny Llama, with scripted forwards as generate()
makes them: a prefill forward, then single-token forwards that share a DynamicCache.

The reference is the same tiny model run by plain transformers code, with hooks on each layer's down projection
that record its input (the FFN intermediate activation a) and, where asked, multiply it by a given 0/1 mask.
The engine stores the down projection neuron-major (a transposed view of an (I, D) tensor), which changes fp32
rounding by ~1e-8 against a model that keeps the (D, I) layout; the reference therefore gets the same layout
(constructing a Controller re-lays the weights out without attaching anything), and dense forwards are then
compared bit for bit."""
from __future__ import annotations


import pytest
import torch
from transformers import DynamicCache

from tests.conftest import tiny_llama  # noqa: E402
from dart.engine.controller import Controller  # noqa: E402
from dart.compose import auto_spec, drift_spec, engine_spec  # noqa: E402

LAYERS, INTER = 2, 64
NO_DRIFT = drift_spec(enabled=False)


class Reference:
    """A plain tiny Llama (same weights and layout as the engine's) with recording / masking hooks."""

    def __init__(self, **kw):
        self.model = tiny_llama(layers=LAYERS, inter=INTER, **kw)
        Controller(self.model, engine_spec(drift=NO_DRIFT))  # the engine's weight layout; nothing attached
        self.masks = None  # (L, I) bool applied to a, or "inlayer" (compat: mask a from its own statistics)
        self.keep = INTER // 2
        self.acts: list[list[torch.Tensor]] = [[] for _ in range(LAYERS)]
        for l, layer in enumerate(self.model.model.layers):
            layer.mlp.down_proj.register_forward_pre_hook(self._hook(l))

    def _hook(self, l):
        def hook(module, args):
            a = args[0]
            self.acts[l].append(a.detach().clone())
            if self.masks is None:
                return None
            if isinstance(self.masks, str):  # same-pass: the mask from this forward's own statistics
                mask = topk(a.float().square().sum(dim=(0, 1)).sqrt(), self.keep)
            else:
                mask = self.masks[l]
            return (a * mask.to(a.dtype),)
        return hook


def topk(score: torch.Tensor, k: int) -> torch.Tensor:
    return torch.zeros_like(score, dtype=torch.bool).scatter_(-1, score.topk(k, dim=-1).indices, True)


def original_order(c: Controller, t: torch.Tensor) -> torch.Tensor:
    """(L, B, I) tensor in the physical (possibly compacted) neuron order -> the original order."""
    idx = c.order.long()[:, None, :].expand_as(t)
    return torch.zeros_like(t).scatter_(-1, idx, t)


def forwards(model, prompt: torch.Tensor, tokens: list[int]):
    """Yield the logits of a prefill forward and then one forward per token, sharing a DynamicCache."""
    cache = DynamicCache()
    yield model(input_ids=prompt, past_key_values=cache, use_cache=True).logits
    for t in tokens:
        yield model(input_ids=torch.tensor([[t]] * prompt.shape[0]), past_key_values=cache, use_cache=True).logits


PROMPT = torch.tensor([[5, 17, 99, 3, 42, 77]])
TOKENS = [11, 64, 8, 120, 33, 7]


@pytest.mark.parametrize("m,execution", [(1, "masked"), (2, "masked"), (3, "masked"), (2, "compact")])
def test_trace_build_prune(m, execution):
    model = tiny_llama(layers=LAYERS, inter=INTER)
    c = Controller(model, engine_spec(sparsity=0.5, masking_step=m, execution=execution, drift=NO_DRIFT)).attach()
    ref, dense = Reference(), Reference()
    prev = torch.zeros(LAYERS, 1, INTER)
    expected_mask = None
    runs = zip(forwards(model, PROMPT, TOKENS), forwards(ref.model, PROMPT, TOKENS), forwards(dense.model, PROMPT, TOKENS))
    for s in range(len(TOKENS) + 1):
        if s == m:  # the reference applies the mask computed by hand from forwards 0..m-1
            A = torch.stack([sum(x.float().square().sum(dim=(0, 1)) for x in ref.acts[l][:m]) for l in range(LAYERS)])
            expected_mask = topk(A.sqrt(), INTER // 2)
            ref.masks = expected_mask
        got, want, dense_logits = next(runs)
        A_now = original_order(c, c.stats.A)
        if s < m:
            assert not torch.equal(A_now, prev), f"forward {s} must trace"
            assert c.M.eq(1).all() and c.has_mask == [False] and c.masks().all()
            assert torch.equal(got, want) and torch.equal(got, dense_logits), f"forward {s} must run dense"
            if s == m - 1:  # the statistic is exactly sum_t a_t^2 over the traced tokens
                A_hand = torch.stack([sum(x.float().square().sum(dim=(0, 1)) for x in ref.acts[l][:m])
                                      for l in range(LAYERS)])
                assert torch.allclose(A_now[:, 0], A_hand, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(A_now, prev), f"forward {s} must not trace"
            assert c.has_mask == [True]
            assert torch.equal(c.masks()[:, 0], expected_mask)
            assert c.masks().sum(-1).tolist() == [[INTER // 2]] * LAYERS
            tol = 0.0 if execution == "masked" else 1e-5
            assert torch.allclose(got, want, rtol=0, atol=tol), f"forward {s}: the mask applies"
            if s == m:
                assert (got - dense_logits).abs().max() > 1e-3  # and it matters
        prev = A_now.clone()
    assert c.compacted == (execution == "compact")
    if execution == "compact":
        assert c.kept_prefix == [INTER // 2] * LAYERS
        assert not torch.equal(c.order, torch.arange(INTER, dtype=torch.int32).repeat(LAYERS, 1))
        # kept neurons sit in a prefix: physical mask = ones then zeros
        assert c.M[:, 0, : INTER // 2].eq(1).all() and c.M[:, 0, INTER // 2 :].eq(0).all()


@pytest.mark.parametrize("execution", ["masked", "compact"])
def test_release_step(execution):
    """m = 1, r = 3: forwards 1 and 2 are pruned, from forward 3 on activations pass unmasked (no tracing)."""
    model = tiny_llama(layers=LAYERS, inter=INTER)
    c = Controller(model, engine_spec(sparsity=0.5, masking_step=1, release_step=3, execution=execution,
                                     drift=NO_DRIFT)).attach()
    ref, dense = Reference(), Reference()
    runs = zip(forwards(model, PROMPT, TOKENS), forwards(ref.model, PROMPT, TOKENS), forwards(dense.model, PROMPT, TOKENS))
    tol = 0.0 if execution == "masked" else 1e-5
    A_after_prefill = None
    for s in range(len(TOKENS) + 1):
        if s == 1:
            A = torch.stack([ref.acts[l][0].float().square().sum(dim=(0, 1)) for l in range(LAYERS)])
            ref.masks = topk(A.sqrt(), INTER // 2)
        if s == 3:
            ref.masks = None  # released: dense FFNs (over the cache the pruned forwards left)
        got, want, dense_logits = next(runs)
        assert torch.allclose(got, want, rtol=0, atol=tol), s
        if s in (1, 2):
            assert (got - dense_logits).abs().max() > 1e-3, s  # pruned
        if s == 0:
            A_after_prefill = original_order(c, c.stats.A).clone()
        else:  # no tracing after the prefill (m = 1), nor after the release
            assert torch.equal(original_order(c, c.stats.A), A_after_prefill)
    assert c.step == len(TOKENS) + 1


@pytest.mark.parametrize("statistic", ["ema", "griffin"])
def test_statistic_through_the_schedule(statistic):
    """m = 3 over a prefill of 6 tokens and two decode inputs, checked against the recorded activations:
    ema (d = 0.5): A = d^2 sum_t w_t |a_t| (w_t = d^(5-t) / sum) + (1-d) d |a_1| + (1-d) |a_2|, score A;
    griffin: sum over all 8 tokens of (a_t / ||a_t||)^2, score its square root."""
    d = 0.5
    kw = {"ema_decay": d} if statistic == "ema" else {"statistic": "griffin"}
    model = tiny_llama(layers=LAYERS, inter=INTER)
    c = Controller(model, engine_spec(sparsity=0.5, masking_step=3, execution="masked", drift=NO_DRIFT, **kw)).attach()
    ref = Reference()
    runs = zip(forwards(model, PROMPT, TOKENS[:3]), forwards(ref.model, PROMPT, TOKENS[:3]))
    for _ in range(3):
        got, want = next(runs)
        assert torch.equal(got, want)
    expected = []
    for l in range(LAYERS):
        a0, a1, a2 = (x[0].float() for x in ref.acts[l][:3])  # (6, I), (1, I), (1, I)
        if statistic == "ema":
            w = torch.tensor([d ** (5 - t) for t in range(6)])
            w = w / w.sum()
            expected.append(d * d * (w[:, None] * a0.abs()).sum(0) + (1 - d) * d * a1[0].abs() + (1 - d) * a2[0].abs())
        else:
            rows = torch.cat([a0, a1, a2])
            expected.append((rows / rows.norm(dim=-1, keepdim=True)).square().sum(0))
    expected = torch.stack(expected)
    assert torch.allclose(c.stats.A[:, 0], expected, rtol=1e-5, atol=1e-7)
    assert c.has_mask == [False]
    score = expected if statistic == "ema" else expected.sqrt()
    ref.masks = topk(score, INTER // 2)
    got, want = next(runs)  # forward 3 builds and applies the mask
    assert torch.equal(c.masks()[:, 0], ref.masks)
    assert torch.equal(got, want)


def test_new_request_resets():
    """A forward with an empty cache, or a plain model(ids) call, starts fresh statistics and masks."""
    model = tiny_llama(layers=LAYERS, inter=INTER)
    spec = engine_spec(sparsity=0.5, masking_step=2, execution="masked", drift=NO_DRIFT)
    c = Controller(model, spec).attach()
    for _ in forwards(model, PROMPT, TOKENS[:4]):
        pass
    assert c.has_mask == [True] and not c.masks().all() and c.step == 5 and c.counts.requests == 1

    def fresh_stats(ids):
        m2 = tiny_llama(layers=LAYERS, inter=INTER)
        c2 = Controller(m2, spec).attach()
        m2(ids)
        return c2.stats.A.clone()

    ref = Reference()
    ids2 = torch.tensor([[9, 8, 7, 6]])
    out = model(ids2)  # plain call: no cache passed
    assert c.counts.requests == 2 and c.step == 1 and c.has_mask == [False]
    assert c.M.eq(1).all()
    assert torch.equal(c.stats.A, fresh_stats(ids2))
    assert torch.equal(out.logits, ref.model(ids2).logits)  # forward 0 of the new request runs dense

    ids3 = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = model(input_ids=ids3, past_key_values=DynamicCache(), use_cache=True)  # empty cache, batch 2
    assert c.counts.requests == 3 and c.step == 1 and c.B == 2 and c.has_mask == [False, False]
    assert c.M.shape == (LAYERS, 2, INTER) and c.M.eq(1).all()
    assert torch.equal(c.stats.A, fresh_stats(ids3))
    assert torch.equal(out.logits, ref.model(ids3).logits)


def test_compat_masks_the_prefill_itself_and_causal_does_not():
    ids = torch.tensor([[5, 17, 99, 3, 42, 77, 1, 2]])
    dense = Reference().model(ids).logits

    model = tiny_llama(layers=LAYERS, inter=INTER)
    c = Controller(model, engine_spec(sparsity=0.5, masking_step=1, execution="masked", drift=NO_DRIFT)).attach()
    assert torch.equal(model(ids).logits, dense)  # causal m = 1: the prefill runs dense
    assert c.has_mask == [False] and c.M.eq(1).all()

    model = tiny_llama(layers=LAYERS, inter=INTER)
    c = Controller(model, engine_spec(sparsity=0.5, masking_step=0, protocol="compat", execution="masked",
                                     drift=NO_DRIFT)).attach()
    got = model(ids).logits
    assert (got - dense).abs().max() > 1e-3  # compat (m = 0): the prefill is pruned
    assert c.has_mask == [True] and c.masks().sum(-1).tolist() == [[INTER // 2]] * LAYERS
    # ... layer by layer, with each layer's mask from its own statistics of this same forward
    ref = Reference()
    ref.masks = "inlayer"
    assert torch.allclose(got, ref.model(ids).logits, rtol=0, atol=1e-6)
    # and the next forward (same request) keeps that mask without tracing
    model(torch.tensor([[8]]))  # a plain call is a new request: traced and masked in the same pass again
    assert c.counts.requests == 2
    cache = DynamicCache()
    model(input_ids=ids, past_key_values=cache, use_cache=True)
    A, M = c.stats.A.clone(), c.M.clone()
    model(input_ids=torch.tensor([[3]]), past_key_values=cache, use_cache=True)
    assert torch.equal(c.stats.A, A) and torch.equal(c.M, M) and c.step == 2


# ---------------------------------------------------------------------------------------------- scoring protocol
def _score_vs_decode(spec_kw, prompt, cont, m):
    """Controller.score() over prompt + continuation in one forward vs the decode path of the same request."""
    ids = torch.tensor([prompt + cont])
    P = len(prompt)
    model = tiny_llama(layers=LAYERS, inter=INTER)
    c = Controller(model, engine_spec(sparsity=0.5, masking_step=m, execution="masked", drift=NO_DRIFT, **spec_kw)).attach()
    scored = c.score(model, ids, torch.tensor([P]))
    score_masks = c.masks().clone()
    return ids, P, model, c, scored, score_masks


@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("statistic", ["l2", "ema"])
def test_causal_score_equals_teacher_forced_decode(m, statistic):
    """causal: the request is scored as GRIFFIN's classification mode -- statistics from the context before its
    last token (and the next m-1 positions), the mask from the last context position on (it predicts the first
    continuation token). The one-forward result equals the decode path: prefill = context minus its last
    token, then the last context token and the continuation fed one by one."""
    prompt, cont = [5, 17, 99, 3, 42, 77], [11, 64, 8, 120]
    kw = {"ema_decay": 0.7} if statistic == "ema" else {}
    ids, P, model, c, scored, score_masks = _score_vs_decode(kw, prompt, cont, m)
    model2 = tiny_llama(layers=LAYERS, inter=INTER)
    c2 = Controller(model2, engine_spec(sparsity=0.5, masking_step=m, execution="masked", drift=NO_DRIFT, **kw)).attach()
    steps = list(forwards(model2, ids[:, : P - 1], ids[0, P - 1 :].tolist()))
    decoded = torch.cat(steps, dim=1)  # positions 0 .. P-2, then P-1 .. T-1 one by one
    assert torch.equal(c2.masks(), score_masks)
    assert torch.allclose(scored, decoded, rtol=0, atol=1e-5)
    # the positions before the mask step are dense, the rest pruned
    dense = Reference().model(ids).logits
    first_pruned = P - 1 + m - 1
    assert torch.equal(scored[:, :first_pruned], dense[:, :first_pruned])
    assert (scored[:, first_pruned] - dense[:, first_pruned]).abs().max() > 1e-3


def test_causal_score_prunes_a_single_token_continuation():
    """The logits that score a one-token answer (at the last context position) are pruned with m = 1."""
    ids = torch.tensor([[5, 17, 99, 3, 42, 77, 11]])
    model = tiny_llama(layers=LAYERS, inter=INTER)
    c = Controller(model, engine_spec(sparsity=0.5, masking_step=1, execution="masked", drift=NO_DRIFT)).attach()
    scored = c.score(model, ids, torch.tensor([6]))
    dense = Reference().model(ids).logits
    assert torch.equal(scored[:, :5], dense[:, :5])
    assert (scored[:, 5] - dense[:, 5]).abs().max() > 1e-3
    # the mask comes from the first five tokens only
    ref = Reference()
    ref.model(ids[:, :5])
    A = torch.stack([ref.acts[l][0].float().square().sum(dim=(0, 1)) for l in range(LAYERS)])
    assert torch.equal(c.masks()[:, 0], topk(A.sqrt(), INTER // 2))


@pytest.mark.parametrize("statistic", ["l2", "ema"])
def test_compat_score_equals_same_pass_forward(statistic):
    """compat: one forward over context + continuation, traced and pruned in the same pass -- the same as the
    generate path's compat prefill over the whole request (statistics over all its tokens)."""
    ids = torch.tensor([[5, 17, 99, 3, 42, 77, 11, 64, 8]])
    kw = {"ema_decay": 0.7} if statistic == "ema" else {}
    spec = dict(sparsity=0.5, masking_step=0, protocol="compat", execution="masked", drift=NO_DRIFT, **kw)
    model = tiny_llama(layers=LAYERS, inter=INTER)
    c = Controller(model, engine_spec(**spec)).attach()
    scored = c.score(model, ids, torch.tensor([6]))
    masks = c.masks().clone()
    model2 = tiny_llama(layers=LAYERS, inter=INTER)
    c2 = Controller(model2, engine_spec(**spec)).attach()
    same_pass = model2(ids).logits
    assert torch.equal(c2.masks(), masks)
    assert torch.allclose(scored, same_pass, rtol=0, atol=1e-6)
