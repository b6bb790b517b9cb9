"""The evaluation suite (dart/evals): perplexity protocols and modes, the scoring protocols of Controller.score()
through the harness, batch invariance of lm-eval accuracy, fidelity, summarization and the drift study.

Everything runs on tiny random models (tests/conftest.py) with the committed 1k-token BPE, or on stub models whose
log-probabilities are worked out by hand in the comments. Where a test needs the dense activations of the engine's
model, a second model with the same seed and the engine's weight layout records them (see test_engine_schedule.py
for why the layout matters: it makes dense forwards bit-identical)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import tiny_llama  # noqa: E402
from dart.engine.controller import Controller  # noqa: E402
from dart.compose import auto_spec, drift_spec, engine_spec  # noqa: E402
from dart.errors import ConfigError  # noqa: E402
from dart.evals.base import EvalContext  # noqa: E402
from dart.strategies import Dense  # noqa: E402
from dart.compose import build_strategy  # noqa: E402

LAYERS, INTER, VOCAB = 2, 64, 1024  # VOCAB: the tiny BPE's size
NO_DRIFT = {"enabled": False}


@pytest.fixture(scope="module")
def tok():
    from dart.models.tokenizers import tiny_tokenizer

    return tiny_tokenizer()


def model(**kw):
    return tiny_llama(layers=LAYERS, inter=INTER, vocab=VOCAB, **kw)


def run(evaluator, ctx):
    """setup -> one step per batch -> finalize, as the Lightning loop drives an Evaluator."""
    evaluator.setup(ctx)
    return evaluator.finalize([evaluator.step(b) for b in evaluator.batches()])


def context(m, tokenizer, strategy, tmp_path, model_cfg=None):
    if strategy.name != "dense":
        strategy.attach(m, tokenizer)
    return EvalContext(model=m, tokenizer=tokenizer, strategy=strategy, run_dir=tmp_path, model_cfg=model_cfg)


class Recorder:
    """The tiny Llama of model() (same seed, the engine's weight layout) with a hook on every down projection that
    records its input a (the FFN intermediate activation) and can replace it: edit(layer, a) -> a'."""

    def __init__(self, edit=None):
        self.model = model()
        Controller(self.model, engine_spec(drift=drift_spec(enabled=False)))  # re-lays the weights out, attaches nothing
        self.edit = edit
        self.acts: list[list[torch.Tensor]] = [[] for _ in range(LAYERS)]
        for l, layer in enumerate(self.model.model.layers):
            layer.mlp.down_proj.register_forward_pre_hook(self._hook(l))

    def _hook(self, l):
        def hook(module, args):
            self.acts[l].append(args[0].detach().clone())
            return None if self.edit is None else (self.edit(l, args[0]),)
        return hook


def topk(score: torch.Tensor, k: int) -> torch.Tensor:
    return torch.zeros_like(score, dtype=torch.bool).scatter_(-1, score.topk(k, dim=-1).indices, True)


def l2_masks(acts: list[torch.Tensor], k: int = INTER // 2) -> torch.Tensor:
    """(L, I) masks of the l2 statistic / magnitude ranking: keep the k largest ||a_j|| over the given tokens."""
    return torch.stack([topk(a.float().square().sum(dim=(0, 1)).sqrt(), k) for a in acts])


# ============================================================================ 1. perplexity, by hand
# A stub LM whose next-token distribution depends only on the input token x: logit ln 3 for (x + 1) % 4, 0 for the
# other three tokens, so p(next = x + 1) = 3 / (3 + 1 + 1 + 1) = 1/2 ("hit", NLL ln 2), any other 1/6 ("miss",
# NLL ln 6). It records every forward's input ids, so the windows' contexts can be checked.
class BigramStub:
    dynamic = False

    def __init__(self):
        self.calls: list[tuple[list[int], bool]] = []

    def __call__(self, input_ids, past_key_values=None, use_cache=False, **kw):
        self.calls.append((input_ids[0].tolist(), past_key_values is not None))
        logits = torch.zeros(*input_ids.shape, 4)
        logits.scatter_(-1, ((input_ids + 1) % 4)[..., None], math.log(3))
        return SimpleNamespace(logits=logits)


class DigitTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(c) for c in text.split()]}


IDS = [0, 1, 2, 2, 3, 0, 1, 1, 2, 3]
#  target j:   1  2  3  4  5  6  7  8  9
#  hit?        H  H  m  H  H  H  m  H  H     (m: IDS[j] != IDS[j-1] + 1 mod 4)
LN2, LN6 = math.log(2), math.log(6)
# sliding, window 4, stride 2: windows [0,4) [2,6) [4,8) [6,10) score targets {1,2,3} {4,5} {6,7} {8,9}
SLIDING = [((0, 4, 3), 2 * LN2 + LN6), ((2, 6, 2), 2 * LN2), ((4, 8, 2), LN2 + LN6), ((6, 10, 2), 2 * LN2)]
SLIDING_PPL = (2 ** 7 * 6 ** 2) ** (1 / 9)  # exp((7 ln 2 + 2 ln 6) / 9): every target once
# chunks of 4: [0,4) [4,8) score {1,2,3} {5,6,7}; token 4 starts a chunk (no context), 8-9 are the partial tail
CHUNKS = [((0, 4, 3), 2 * LN2 + LN6), ((4, 8, 3), 2 * LN2 + LN6)]
CHUNKS_PPL = (2 ** 4 * 6 ** 2) ** (1 / 6)


@pytest.fixture
def digits(monkeypatch):
    import dart.data.texts

    monkeypatch.setattr(dart.data.texts, "load_text", lambda name: " ".join(map(str, IDS)))


@pytest.mark.parametrize("mode", ["prefill", "decode"])
@pytest.mark.parametrize("protocol,expected,ppl", [("sliding", SLIDING, SLIDING_PPL), ("chunks", CHUNKS, CHUNKS_PPL)],
                         ids=["sliding", "chunks"])
def test_perplexity_by_hand(digits, tmp_path, protocol, expected, ppl, mode):
    from dart.evals.perplexity import Perplexity

    stub = BigramStub()
    ev = Perplexity(texts=["news"], protocol=protocol, window=4, stride=2, mode=mode, prime=1)
    ev.setup(EvalContext(model=stub, tokenizer=DigitTokenizer(), strategy=Dense(), run_dir=tmp_path))
    assert [(w.index, w.ids.tolist(), w.n_scored) for w in ev._windows] == [
        (i, IDS[b:e], s) for i, ((b, e, s), _) in enumerate(expected)]
    outputs = [ev.step(batch) for batch in ev.batches()]
    per_window = [row for rows in outputs for row in rows]
    assert [n for _, _, n in per_window] == [s for (_, _, s), _ in expected]
    assert [nll for _, nll, _ in per_window] == pytest.approx([v for _, v in expected], abs=1e-6)
    metrics = ev.finalize(outputs)
    assert metrics["news"] == pytest.approx(ppl, rel=1e-6)
    assert ev.extra["tokens_scored"]["news"] == sum(s for (_, _, s), _ in expected)
    assert ev.extra["mode"] == mode
    # what the model saw: each window's ids but its last token (prefill: one forward), or its first token as the
    # prompt (prime 1; the window's unscored context is 1 token) and then the teacher-forced rest in one cached
    # forward (decode: a strategy without a schedule needs no more; dart.engine.forcing)
    calls = []
    for (b, e, s), _ in expected:
        if mode == "prefill":
            calls.append((IDS[b : e - 1], False))
        else:
            p = e - b - s  # the window's unscored context: the prompt (prime 1 is never longer)
            calls += [(IDS[b : b + p], True)] + ([(IDS[b + p : e - 1], True)] if e - 1 > b + p else [])
    assert stub.calls == calls


def test_perplexity_batches_and_limit(digits, tmp_path):
    """Windows of the same shape run as one batch: same per-window NLL; limit keeps the first windows."""
    from dart.evals.perplexity import Perplexity

    ctx = EvalContext(model=BigramStub(), tokenizer=DigitTokenizer(), strategy=Dense(), run_dir=tmp_path)
    ev = Perplexity(texts=["news"], protocol="sliding", window=4, stride=2, mode="prefill", batch_size=3)
    ev.setup(ctx)
    assert [len(b) for b in ev.batches()] == [1, 3]  # (4 tokens, 3 scored) alone; the three 2-scored windows
    assert ev.finalize([ev.step(b) for b in ev.batches()])["news"] == pytest.approx(SLIDING_PPL, rel=1e-6)
    ev = Perplexity(texts=["news"], protocol="sliding", window=4, stride=2, mode="prefill", limit=2)
    # the first two windows: targets 1..5, hits 1 2 4 5, miss 3
    assert run(ev, ctx)["news"] == pytest.approx(math.exp((4 * LN2 + LN6) / 5), rel=1e-6)
    # decode with prime 2: the first window's prompt (2 tokens) is longer than its unscored context (1 token), so
    # target 2 is scored from the prompt's forward; every target is still scored exactly once
    stub = BigramStub()
    ev = Perplexity(texts=["news"], protocol="sliding", window=4, stride=2, mode="decode", prime=2)
    ctx = EvalContext(model=stub, tokenizer=DigitTokenizer(), strategy=Dense(), run_dir=tmp_path)
    assert run(ev, ctx)["news"] == pytest.approx(SLIDING_PPL, rel=1e-6)
    assert stub.calls == [([0, 1], True), ([2], True), ([2, 2], True), ([3], True), ([3, 0], True), ([1], True),
                          ([1, 1], True), ([2], True)]


@pytest.mark.parametrize("n", [2, 3, 7, 10, 33, 64])
@pytest.mark.parametrize("window,stride", [(2, 1), (4, 1), (4, 2), (4, 3), (5, 2), (8, 3), (16, 16)])
def test_windows_score_every_token_once(n, window, stride):
    from dart.evals.perplexity import windows

    ids = torch.arange(n)
    for protocol in ("sliding", "chunks"):
        if protocol == "sliding" and stride >= window:
            with pytest.raises(ConfigError, match="stride"):
                windows(ids, protocol, window, stride)
            continue
        spans = windows(ids, protocol, window, stride)
        scored = [t for b, e, s in spans for t in range(e - s, e)]
        for b, e, s in spans:
            assert 0 <= b < e <= n and e - b <= window
            assert 1 <= s <= e - b - 1  # every scored token has its predecessor inside the window
        assert len(scored) == len(set(scored))  # none twice
        if protocol == "sliding":
            assert sorted(scored) == list(range(1, n))  # none skipped: every token but the first
            assert all(b % stride == 0 for b, _, _ in spans)
        else:
            full = n // window * window
            assert sorted(scored) == [t for t in range(full) if t % window]  # each chunk but its first token
            assert [(b, e) for b, e, _ in spans] == [(b, b + window) for b in range(0, full, window)]


def test_windows_by_hand():
    from dart.evals.perplexity import windows

    ids = torch.arange(11)
    assert windows(ids, "sliding", 4, 2) == [(0, 4, 3), (2, 6, 2), (4, 8, 2), (6, 10, 2), (8, 11, 1)]
    assert windows(ids, "sliding", 6, 4) == [(0, 6, 5), (4, 10, 4), (8, 11, 1)]
    assert windows(ids, "chunks", 4, 999) == [(0, 4, 3), (4, 8, 3)]
    assert windows(torch.arange(3), "chunks", 4, 1) == []


@pytest.mark.parametrize("kw", [dict(window=4, stride=4), dict(window=4, stride=9), dict(window=4, stride=0),
                                dict(window=1, stride=1, protocol="chunks"), dict(protocol="bogus")])
def test_perplexity_rejects_bad_windows_before_loading(kw):
    from dart.evals.perplexity import Perplexity

    with pytest.raises(ConfigError):
        Perplexity(texts=["news"], **{"protocol": "sliding", "window": 4, "stride": 2, **kw})


# ============================================================================ 2. perplexity modes on a tiny Llama
PPL_KW = dict(texts=["news"], protocol="sliding", window=40, stride=16, limit=3, prime=8)
# windows (T, n_scored): (40, 39), (40, 16), (40, 16); decode prompts max(T - n, prime) = 8, 24, 24 tokens
PROMPTS = [8, 24, 24]


@pytest.fixture
def short_news(monkeypatch):
    """The first 8 real news articles as the `news` text (the evaluator tokenizes the whole text)."""
    import dart.data.texts

    text = "\n".join(dart.data.texts.news_articles()[:8])
    monkeypatch.setattr(dart.data.texts, "load_text", lambda name: text)
    return text


def test_dense_decode_equals_prefill(tok, tmp_path, short_news):
    from dart.evals.perplexity import Perplexity

    m = model()
    ctx = context(m, tok, Dense(), tmp_path)
    prefill = Perplexity(mode="prefill", **PPL_KW)
    decode = Perplexity(mode="decode", **PPL_KW)
    auto = Perplexity(mode="auto", **PPL_KW)
    p, d, a = run(prefill, ctx), run(decode, ctx), run(auto, ctx)
    assert decode.extra["mode"] == "decode" and auto.extra["mode"] == "prefill"  # dense is not dynamic
    assert prefill.extra["tokens_scored"] == decode.extra["tokens_scored"] == {"news": 39 + 16 + 16}
    assert 200 < p["news"] < 5000  # a random model on a 1k vocabulary: near-uniform
    assert d["news"] == pytest.approx(p["news"], rel=1e-5)
    assert a["news"] == p["news"]


@pytest.mark.parametrize("make", [lambda: build_strategy("static_prompt", sparsity=0.5), lambda: build_strategy("dart", sparsity=0.5, drift=NO_DRIFT)],
                         ids=["static_prompt", "dart"])
def test_dynamic_decode_is_primed_by_the_prefix(tok, tmp_path, make, short_news):
    """A dynamic strategy in one prefill forward only traces (the mask is built after the forward that traced it),
    so prefill mode is dense; decode mode traces the window's context and prunes every later token."""
    from dart.evals.perplexity import Perplexity

    dense = run(Perplexity(mode="prefill", **PPL_KW), context(model(), tok, Dense(), tmp_path))["news"]
    strategy = make()
    ctx = context(model(), tok, strategy, tmp_path)
    c = strategy.controller
    prefill = run(Perplexity(mode="prefill", **PPL_KW), ctx)["news"]
    assert c.counts.requests == 3 and c.counts.builds == 0 and c.has_mask == [False]
    assert float(c.counts.tokens_traced) == 3 * 39  # each whole window (its last token is never input)
    assert prefill == pytest.approx(dense, rel=1e-5)

    c.counts.requests, c.counts.builds, c.counts.tokens_traced = 0, 0, torch.zeros_like(c.counts.tokens_traced)
    ev = Perplexity(mode="auto", **PPL_KW)
    decode = run(ev, ctx)["news"]
    assert ev.extra["mode"] == "decode" and ev.extra["tokens_scored"] == {"news": 71}
    assert abs(decode / prefill - 1) > 1e-3  # pruned: a different perplexity
    assert c.counts.requests == 3 and c.counts.builds == 3 and c.has_mask == [True]
    assert float(c.counts.tokens_traced) == sum(PROMPTS)  # statistics from each window's prompt only
    # the mask in place is the last window's: top half of ||a_j|| over its 24-token prompt, dense activations
    ids = torch.tensor(tok(short_news, add_special_tokens=False)["input_ids"])
    last = ev._windows[-1].ids
    assert torch.equal(last, ids[32:72])  # the third window: begin 2 * stride
    ref = Recorder()
    ref.model(last[None, : PROMPTS[-1]])
    assert torch.equal(c.masks()[:, 0], l2_masks([a[0] for a in ref.acts]))
    assert c.masks().sum(-1).eq(INTER // 2).all()


# ============================================================================ 3. scoring protocols: masked positions
CTX_LENS, CONT_LENS = [5, 7, 9], [3, 2, 4]


def _score_batch(spec):
    g = torch.Generator().manual_seed(7)
    rows = [torch.randint(3, VOCAB, (c + k - 1,), generator=g) for c, k in zip(CTX_LENS, CONT_LENS)]
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):  # right padding, as the harness pads
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    m = model()
    c = Controller(m, engine_spec(sparsity=0.5, execution="masked", drift=drift_spec(enabled=False), **spec)).attach()
    scored = c.score(m, ids, torch.tensor(CTX_LENS), attention_mask=mask)
    with c.paused():
        dense = m(input_ids=ids, attention_mask=mask).logits
    return rows, c, scored, dense


@pytest.mark.parametrize("masking_step", [1, 2])
def test_causal_score_prunes_from_the_last_context_position(masking_step):
    """causal: row b with context length C (the harness passes prompt_len = C) takes its statistics from positions
    0 .. C-3+m (the context without its last token, then m-1 more) and is pruned from position C-2+m on: m = 1
    prunes the last context position, whose logits predict the first continuation token; m = 2 one later."""
    rows, c, scored, dense = _score_batch(dict(masking_step=masking_step))
    masks = c.masks()
    for b, (r, C) in enumerate(zip(rows, CTX_LENS)):
        first = C - 1 + masking_step - 1
        assert torch.equal(scored[b, :first], dense[b, :first]), b  # bit for bit
        diff = (scored[b, first : len(r)] - dense[b, first : len(r)]).abs().amax(-1)
        assert diff.gt(1e-3).all(), (b, diff)  # every later position differs
        ref = Recorder()
        ref.model(r[None, :first])  # dense activations of the traced positions
        expected = l2_masks([a[0] for a in ref.acts])
        assert torch.equal(masks[:, b], expected), b
        # and the pruned logits are exactly the dense model with that mask from position `first` on
        ref = Recorder(edit=lambda l, a, e=expected, f=first: torch.cat([a[:, :f], a[:, f:] * e[l]], dim=1))
        assert torch.allclose(scored[b, : len(r)], ref.model(r[None]).logits[0], rtol=0, atol=1e-5), b
    assert not torch.equal(masks[:, 0], masks[:, 1])  # per-row masks


def test_compat_score_traces_and_prunes_every_position():
    """compat (m = 0): every non-padding position of a row is traced and pruned in the same pass, layer by layer
    (layer l's mask from layer l's activations of the whole request, after the earlier layers were pruned)."""
    rows, c, scored, dense = _score_batch(dict(masking_step=0, protocol="compat"))
    masks = c.masks()
    for b, r in enumerate(rows):
        diff = (scored[b, : len(r)] - dense[b, : len(r)]).abs().amax(-1)
        assert diff.gt(1e-3).all(), (b, diff)  # position 0 included
        got = []

        def same_pass(l, a):
            mask = l2_masks([a])[0]
            got.append(mask)
            return a * mask

        ref = Recorder(edit=same_pass)
        expected = ref.model(r[None]).logits[0]  # the row alone: no padding in its statistics
        assert torch.allclose(scored[b, : len(r)], expected, rtol=0, atol=1e-5), b
        assert torch.equal(masks[:, b], torch.stack(got)), b


def test_harness_scores_with_the_protocol(tok):
    """DartLM passes each request's context length to Controller.score(): a one-token answer is scored from the
    pruned last context position (causal, m = 1), so it differs from dense and equals the engine's own score."""
    from dart.evals.harness import DartLM

    ctx_ids, cont_ids = list(range(10, 22)), [40]
    m = model()
    dense_lm = DartLM(m, tok, Dense(), batch_size=1)
    (dense_lp, _), = dense_lm._loglikelihood_tokens([(("", ""), ctx_ids, cont_ids)], disable_tqdm=True)
    s = build_strategy("dart", retrace_tokens=None, **{"drift.min_margin": 0.1}, sparsity=0.5)
    s.attach(m)
    lm = DartLM(m, tok, s, batch_size=1)
    (lp, _), = lm._loglikelihood_tokens([(("", ""), ctx_ids, cont_ids)], disable_tqdm=True)
    direct = s.controller.score(m, torch.tensor([ctx_ids]), torch.tensor([12]))[0, 11].log_softmax(-1)[40]
    with s.controller.paused():
        plain = m(torch.tensor([ctx_ids])).logits[0, 11].log_softmax(-1)[40]
    assert lp == pytest.approx(float(direct), abs=1e-5)
    assert dense_lp == pytest.approx(float(plain), abs=1e-5)
    assert abs(lp - dense_lp) > 1e-3
    assert lm.stats == {"requests": 1, "prompts": 1, "rows": 1, "one_pass": 0}


@pytest.mark.parametrize("protocol", ["causal", "compat"])
def test_harness_long_continuation_path(tok, protocol):
    """Continuations of >= m + W tokens: causal scores them as teacher-forced decoding (the detector live); compat is
    the published same pass, one forward whatever the length (before a fix, DART's default drift detector sent
    compat requests down the decode path, which traces the context only)."""
    from dart.evals.decoding import token_logprobs
    from dart.evals.harness import DartLM

    ctx_ids, cont_ids = list(range(10, 22)), list(range(40, 48))  # 8 >= 1 + W = 6
    m = model()
    s = build_strategy("dart", retrace_tokens=None, **{"drift.min_margin": 0.1}, sparsity=0.5, **({"masking_step": 0, "protocol": "compat"} if protocol == "compat" else {}))
    s.attach(m)
    lm = DartLM(m, tok, s, batch_size=1)
    (lp, _), = lm._loglikelihood_tokens([(("", ""), ctx_ids, cont_ids)], disable_tqdm=True)
    full = torch.tensor([ctx_ids + cont_ids])
    if protocol == "compat":
        logits = s.controller.score(m, full[:, :-1], torch.tensor([12]))
        expected = logits[0, 11:].log_softmax(-1).gather(-1, torch.tensor(cont_ids)[:, None]).sum()
        assert lm.stats["one_pass"] == 1
    else:  # prompt = context minus its last token; that token and the continuation one forward each
        expected = token_logprobs(m, full, prefix_len=11, mode="reference")[0, 11:].sum()
        assert lm.stats["one_pass"] == 0
    assert lp == pytest.approx(float(expected), abs=1e-4)


def test_harness_shares_contexts(tok):
    """The choices of one question share its prompt: it runs once (one prefill forward for the batch's prompts),
    its continuations in one forward; one-token answers that feed the same token are one row. The log-likelihoods
    equal one request at a time, token by token (the reference)."""
    from dart.evals.harness import DartLM

    m = model()
    s = build_strategy("dart", retrace_tokens=None, **{"drift.min_margin": 0.1}, sparsity=0.5)
    s.attach(m)
    ctx_a, ctx_b = list(range(10, 22)), list(range(30, 40))  # prompts of 11 and 9 tokens: one batch (padding < 25%)
    reqs = [(("", ""), ctx_a, list(range(40, 48))), (("", ""), ctx_a, list(range(50, 53))),  # 8 and 3 tokens
            (("", ""), ctx_b, [60]), (("", ""), ctx_b, [61]), (("", ""), ctx_b, [62, 63])]
    lm = DartLM(m, tok, s, batch_size=8)
    shapes = []
    h = m.register_forward_pre_hook(lambda mod, args, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    batch = lm._loglikelihood_tokens(reqs, disable_tqdm=True)
    h.remove()
    assert lm.stats == {"requests": 5, "prompts": 2, "rows": 4, "one_pass": 0}
    assert shapes[0] == (2, 11)  # both prompts (context minus its last token) in one prefill
    assert shapes[1][0] == 4 and len(shapes) <= 4  # the 4 rows at once (then re-trace rounds, if a window fired)
    ref = DartLM(m, tok, s, batch_size=1, forcing="reference")
    singles = [ref._loglikelihood_tokens([r], disable_tqdm=True)[0] for r in reqs]
    assert [lp for lp, _ in batch] == pytest.approx([lp for lp, _ in singles], abs=1e-4)
    assert [g for _, g in batch] == [g for _, g in singles] and all(isinstance(g, bool) for _, g in batch)
    assert batch[2][0] != batch[3][0]  # one row, two targets


def test_prompt_batches_group_common_heads():
    from dart.evals.lm import prompt_batches

    head = tuple(range(100, 140))  # 40 tokens of few-shot examples
    prompts = [head + (1, 2), (5, 6, 7), head + (3,), head + (4, 4, 4), (9,) * 50, head[:20] + (8,)]
    assert prompt_batches(prompts, 8, max_pad=1.0) == [([3, 0, 2], 40), ([4, 5, 1], 0)]
    assert prompt_batches(prompts, 2, max_pad=1.0) == [([3, 0], 40), ([4, 2], 0), ([5, 1], 0)]  # a lone cluster member joins the rest
    # prompts without a shared head: a batch closes before one shorter than 3/4 of its longest (padding <= 25%)
    assert prompt_batches(prompts, 8) == [([3, 0, 2], 40), ([4], 0), ([5], 0), ([1], 0)]
    lengths = [(k,) * n for k, n in enumerate((100, 90, 80, 76, 74, 60, 50, 40))]
    assert prompt_batches(lengths, 8) == [([0, 1, 2, 3], 0), ([4, 5], 0), ([6, 7], 0)]
    assert prompt_batches(lengths, 3) == [([0, 1, 2], 0), ([3, 4, 5], 0), ([6, 7], 0)]


def test_harness_few_shot_head_runs_once(tok):
    """5-shot style prompts (a long common head, then each question): the head is one forward of one row; the
    log-likelihoods equal one request at a time, token by token."""
    from dart.evals.harness import DartLM

    m = model()
    s = build_strategy("dart", retrace_tokens=None, sparsity=0.5, drift=dict(sigma_scale=0.0, min_margin=0.0))  # triggers wherever a window dips
    s.attach(m)
    head = list(range(200, 240))
    reqs = [(("", ""), head + q, cont) for q in ([1, 2, 3], [4, 5], [6, 7, 8, 9]) for cont in ([40], [41], list(range(50, 58)))]
    lm = DartLM(m, tok, s, batch_size=8)
    shapes = []
    h = m.register_forward_pre_hook(lambda mod, args, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    batch = lm._loglikelihood_tokens(reqs, disable_tqdm=True)
    h.remove()
    assert shapes[:2] == [(1, 40), (3, 3)]  # the head, then the three questions minus their last token
    ref = DartLM(m, tok, s, batch_size=1, forcing="reference")
    singles = [ref._loglikelihood_tokens([r], disable_tqdm=True)[0] for r in reqs]
    assert [lp for lp, _ in batch] == pytest.approx([lp for lp, _ in singles], abs=1e-4)


# ============================================================================ 4. batch invariance of the harness
TASKS = ["offline_arc_easy", "offline_boolq"]  # multi-token answer texts (some >= 6 tokens) and " yes"/" no"


@pytest.fixture(scope="module")
def tiny_loaded():
    """model=tiny_llama as a run loads it (4 layers, the committed 1k BPE), in fp32: the 1e-4 claims below are fp32's
    (bf16: tests/test_bf16_exactness.py)."""
    from omegaconf import OmegaConf

    from dart.models.loading import load_model

    return load_model(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/model/tiny_llama.yaml"),
                      dtype="float32")


@pytest.fixture(scope="module")
def harness_runs(tiny_loaded):
    """Per strategy and batch size: per-item log-likelihoods, accuracies and scoring counts."""
    import lm_eval

    from dart.evals.harness import DartLM
    from dart.evals.tasks import offline_task_manager

    loaded = tiny_loaded
    manager = offline_task_manager()
    out = {}
    for name, make in [("dense", Dense), ("dart", lambda: build_strategy("dart", retrace_tokens=None, **{"drift.min_margin": 0.1}, sparsity=0.5)), ("griffin", lambda: build_strategy("griffin", sparsity=0.5)),
                       ("static_prompt", lambda: build_strategy("static_prompt", sparsity=0.5))]:
        strategy = make()
        if name != "dense":
            strategy.attach(loaded.model)
        for bs in (1, 8, "ref"):  # "ref": one request at a time, token by token (no shared prompts)
            lm = DartLM(loaded.model, loaded.tokenizer, strategy, batch_size=1 if bs == "ref" else bs,
                        forcing="reference" if bs == "ref" else "chunked")
            res = lm_eval.simple_evaluate(model=lm, tasks=TASKS, limit=4, task_manager=manager, log_samples=True,
                                          bootstrap_iters=0, verbosity="WARNING")
            items = {t: [(s["doc_id"], [float(r[0][0]) for r in s["resps"]], s["acc"]) for s in
                         sorted(res["samples"][t], key=lambda s: s["doc_id"])] for t in TASKS}
            out[name, bs] = {"items": items, "acc": {t: res["results"][t]["acc,none"] for t in TASKS},
                             "stats": dict(lm.stats)}
        if name != "dense":
            strategy.detach()
    return out


@pytest.mark.parametrize("strategy", ["dense", "dart", "griffin", "static_prompt"])
@pytest.mark.parametrize("other", [8, "ref"])
def test_harness_batch_size_does_not_change_results(harness_runs, strategy, other):
    """Batch 1 == batch 8, and shared-prompt chunked scoring == per-request token-by-token scoring."""
    one, eight = harness_runs[strategy, 1], harness_runs[strategy, other]
    assert one["acc"] == eight["acc"]
    for t in TASKS:
        assert len(one["items"][t]) == 4
        for (d1, lls1, acc1), (d8, lls8, acc8) in zip(one["items"][t], eight["items"][t]):
            assert d1 == d8 and acc1 == acc8
            assert len(lls1) == (2 if t == "offline_boolq" else 4)
            assert lls1 == pytest.approx(lls8, abs=1e-4, rel=1e-6), (t, d1)
            assert all(-2000 < x < 0 for x in lls1)
    if other == 8:
        assert one["stats"] == eight["stats"]
    # every choice of a question shares its prompt: 4 (arc) + 4 (boolq) prompts for 24 requests
    assert one["stats"]["requests"] == 24 and one["stats"]["prompts"] == 8


def test_harness_strategies_really_prune(harness_runs):
    dense = harness_runs["dense", 1]["items"]["offline_arc_easy"]
    for name in ("dart", "griffin"):
        pruned = harness_runs[name, 1]["items"]["offline_arc_easy"]
        gaps = [abs(a - b) for (_, la, _), (_, lb, _) in zip(dense, pruned) for a, b in zip(la, lb)]
        assert min(gaps) > 1e-3, name


def test_harness_evaluator_offline(tiny_loaded, tmp_path):
    """eval=ten's Harness evaluator (source=offline): the same metrics at batch 1 and 8, reported per stand-in."""
    from dart.evals.harness import Harness

    strategy = build_strategy("griffin", sparsity=0.5)
    ctx = context(tiny_loaded.model, tiny_loaded.tokenizer, strategy, tmp_path)
    try:
        results = []
        for bs in (1, 8):
            ev = Harness(benchmarks=["rte", "boolq"], source="offline", limit=3, batch_size=bs)
            results.append((run(ev, ctx), ev.extra, ev.notes))
    finally:
        strategy.detach()
    (one, extra, notes), (eight, _, _) = results
    assert one == eight
    assert one["offline_rte/n"] == one["offline_boolq/n"] == 3.0
    assert one["offline_rte/acc"] in (0.0, 1 / 3, 2 / 3, 1.0)
    assert one["average/acc"] == pytest.approx((one["offline_rte/acc"] + one["offline_boolq/acc"]) / 2)
    assert extra["sources"] == {"rte": {"kind": "offline", "tasks": ["offline_rte"]},
                                "boolq": {"kind": "offline", "tasks": ["offline_boolq"]}}
    assert extra["protocol"] == "causal" and extra["scoring"]["one_pass"] == 0 and notes == []


# ============================================================================ 5. fidelity
FID = dict(documents="news", prefix=16, length=12, limit=2)


@pytest.fixture(scope="module")
def news_tokens(tok):
    from dart.data.texts import news_articles

    docs = [tok(d, add_special_tokens=False)["input_ids"] for d in news_articles()]
    return [d for d in docs if len(d) >= FID["prefix"] + FID["length"]]


def test_fidelity_samples_switch_documents(tok, tmp_path, news_tokens):
    from dart.evals.fidelity import Fidelity

    ev = Fidelity(**FID)
    ev.setup(context(model(), tok, Dense(), tmp_path))
    P, L = FID["prefix"], FID["length"]
    assert [(s, i, d) for s, i, _, d in ev._samples] == [("same", 0, {0}), ("switch", 0, {0, 1}), ("same", 1, {1}),
                                                          ("switch", 1, {1, 2})]
    for segment, i, tokens, _ in ev._samples:
        a, b = news_tokens[i], news_tokens[i + 1]
        assert len(tokens) == P + L and tokens[:P] == a[:P]
        if segment == "same":
            assert tokens[P:] == a[P : P + L]
        else:  # the continuation is the start of the NEXT document, not this one's
            assert tokens[P:] == b[:L] and tokens[P:] != a[P : P + L]


def test_fidelity_dense_is_exact(tok, tmp_path):
    from dart.evals.fidelity import Fidelity

    ev = Fidelity(**FID)
    metrics = run(ev, context(model(), tok, Dense(), tmp_path))
    for seg in ("same", "switch"):
        assert metrics[f"{seg}/kl"] == 0.0 and metrics[f"{seg}/top1"] == 1.0
        assert metrics[f"{seg}/n"] == 2.0 and metrics[f"{seg}/kl_lo"] == metrics[f"{seg}/kl_hi"] == 0.0
        assert metrics[f"{seg}/ppl"] == pytest.approx(metrics[f"{seg}/ppl_dense"], rel=1e-6)
        assert 100 < metrics[f"{seg}/ppl_dense"] < 10000
    assert [s["kl"] for s in ev.extra["samples"]] == [0.0] * 4


def test_fidelity_pruned_has_positive_kl(tok, tmp_path):
    from dart.evals.fidelity import Fidelity

    ev = Fidelity(**FID)
    # initializer_range 0.1 (default 0.02): sharper next-token distributions, so KL is far above float noise
    ev.setup(context(model(initializer_range=0.1), tok, build_strategy("dart", sparsity=0.5, drift=NO_DRIFT), tmp_path))
    outputs = [ev.step(s) for s in ev.batches()]
    for o in (o for batch in outputs for o in batch):
        assert o["kl"].shape == o["top1"].shape == o["nll"].shape == o["nll_dense"].shape == (FID["length"],)
        # m = 1: the first continuation token is predicted by the prompt's (dense, traced) forward; then pruned
        assert o["kl"][0].abs() < 1e-5 and o["top1"][0] == 1.0
        assert o["kl"][1:].min() > 1e-3
    metrics = ev.finalize(outputs)
    for seg in ("same", "switch"):
        assert metrics[f"{seg}/kl"] > 5e-3
        per = [float(o["kl"].mean()) for b in outputs for o in b if o["segment"] == seg]
        assert min(per) <= metrics[f"{seg}/kl_lo"] <= metrics[f"{seg}/kl"] <= metrics[f"{seg}/kl_hi"] <= max(per)
        assert 0.0 < metrics[f"{seg}/top1"] < 1.0
        assert abs(metrics[f"{seg}/ppl"] / metrics[f"{seg}/ppl_dense"] - 1) > 1e-3


# ============================================================================ 6. summarization
TEMPLATE = "Summarize the following:\n\n{doc}\n\nSummary:"


@pytest.mark.parametrize("chat", [False, True])
def test_fit_document_truncates_the_document_only(tok, chat):
    import copy

    from dart.data.texts import news_articles
    from dart.evals.generation import fit_document

    t = copy.deepcopy(tok)
    if chat:
        t.chat_template = ("{% for m in messages %}<user>{{ m['content'] }}{% endfor %}"
                           "{% if add_generation_prompt %}<assistant>{% endif %}")
    head, tail = ("<user>" if chat else "") + "Summarize the following:\n\n", "\n\nSummary:" + ("<assistant>" if chat else "")
    doc = " ".join(news_articles()[:3])
    assert len(t(doc)["input_ids"]) > 300
    ids = fit_document(t, TEMPLATE, doc, 64, chat)
    assert 60 <= len(ids) <= 64
    text = t.decode(ids)
    assert text.startswith(head) and text.endswith(tail)
    kept = text[len(head) : -len(tail)]
    assert len(kept) > 100 and doc.startswith(kept)  # the document's beginning, cut
    short = "The cat sat on the mat."
    whole = fit_document(t, TEMPLATE, short, 64, chat)
    assert t.decode(whole) == head + short + tail
    with pytest.raises(ValueError, match="template alone"):
        fit_document(t, TEMPLATE, doc, 5, chat)


def test_rouge_by_hand():
    from dart.evals.summarization import rouge_scores

    s = rouge_scores(["the cat sat on the mat", "the cat sat", "runs quickly", "dogs bark"],
                     ["the cat sat", "the cat sat", "running quick", "the cat sat"])
    # 1: unigrams P = 3/6, R = 3/3 -> F = 2/3; bigrams "the cat", "cat sat" of 5 and 2: P = 2/5, R = 1 -> F = 4/7
    assert s[0] == pytest.approx({"rouge1": 2 / 3, "rouge2": 4 / 7, "rougeL": 2 / 3, "rougeLsum": 2 / 3})
    assert s[1] == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "rougeLsum": 1.0})
    # stemming: runs/running -> run match; quickly -> quickli does not match quick
    assert s[2]["rouge1"] == pytest.approx(0.5) and s[2]["rouge2"] == 0.0
    assert s[3] == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rougeLsum": 0.0}


def test_summarization_eval(tok, tmp_path, monkeypatch):
    import dart.evals.summarization as S
    from dart.data.texts import news_articles

    pairs = [{"id": "a", "document": " ".join(news_articles()[:2]), "summary": "the cat sat"},
             {"id": "b", "document": news_articles()[2], "summary": "dogs bark"}]
    monkeypatch.setattr(S, "load_pairs", lambda name, limit: pairs[:limit])
    ev = S.Summarization(datasets=["wiki"], limit=2, max_input_tokens=48, max_new_tokens=6)
    m = model()
    m.generation_config.eos_token_id = None
    ev.setup(context(m, tok, build_strategy("dart", retrace_tokens=None, **{"drift.min_margin": 0.1}, sparsity=0.5), tmp_path))
    assert all(44 <= len(i["prompt"]) <= 48 for i in ev._items)
    outputs = [ev.step(b) for b in ev.batches()]
    rows = [r for batch in outputs for r in batch]
    assert [r["new_tokens"] for r in rows] == [6, 6] and all(isinstance(r["triggers"], int) for r in rows)
    metrics = ev.finalize(outputs)
    expected = S.rouge_scores([r["prediction"] for r in rows], ["the cat sat", "dogs bark"])
    for k in S.ROUGE:
        assert metrics[f"wiki/{k}"] == pytest.approx(sum(e[k] for e in expected) / 2)
    assert metrics["wiki/n"] == 2.0
    lines = [json.loads(x) for x in (tmp_path / "summaries.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["a", "b"] and lines[0]["reference"] == "the cat sat"
    # finalize on hand-made predictions: one identical summary (1.0) and the cat case of test_rouge_by_hand
    hand = [[dict(rows[0], prediction="the cat sat")], [dict(rows[1], prediction="dogs bark")]]
    assert ev.finalize(hand)["wiki/rougeL"] == 1.0
    hand[1][0]["reference"] = "the dogs bark loudly"  # P = 2/2, R = 2/4 -> F = 2/3
    assert ev.finalize(hand)["wiki/rouge1"] == pytest.approx((1 + 2 / 3) / 2)


@pytest.mark.parametrize("truncation", ["document", "published"])
def test_summarization_truncation(tok, tmp_path, monkeypatch, truncation):
    """eval.truncation: `document` (default) cuts the document and keeps the instruction and the "Summary:" cue;
    `published` cuts the rendered prompt on the right, as the authors' code: the cue of a long document is gone. And a
    batch's re-traces are counted in the row they happened in, with a bootstrap interval around each ROUGE mean."""
    import dart.evals.summarization as S
    from dart.data.texts import news_articles
    from dart.evals.generation import render_prompt

    doc = " ".join(news_articles()[:3])
    pairs = [{"id": str(i), "document": doc, "summary": "the cat sat"} for i in range(3)]
    monkeypatch.setattr(S, "load_pairs", lambda name, limit: pairs[:limit])
    ev = S.Summarization(datasets=["wiki"], limit=3, max_input_tokens=40, max_new_tokens=8, truncation=truncation,
                         batch_size=3)
    m = model()
    m.generation_config.eos_token_id = None
    strategy = build_strategy("dart", retrace_tokens=None, sparsity=0.5, drift={"min_margin": 0.0, "sigma_scale": 0.0,
                                                                            "window": 2, "min_windows": 1})
    ev.setup(context(m, tok, strategy, tmp_path))
    full = render_prompt(tok, S.TEMPLATE.format(doc=doc), False)
    for item in ev._items:
        text = tok.decode(item["prompt"])
        assert len(item["prompt"]) <= 40 and text.startswith("Summarize the following:")
        if truncation == "document":
            assert text.rstrip().endswith("Summary:")
        else:
            assert item["prompt"] == full[:40] and "Summary:" not in text
    outputs = [ev.step(b) for b in ev.batches()]
    rows = outputs[0]
    assert sum(r["triggers"] for r in rows) == len(strategy.drift_log()[1])
    metrics = ev.finalize(outputs)
    assert metrics["wiki/rougeL_lo"] <= metrics["wiki/rougeL"] <= metrics["wiki/rougeL_hi"]
    assert ev.extra["truncation"] == truncation


# ============================================================================ 7. the drift study
def test_token_agreement_and_marks(tok):
    from dart.evals.drift import MARK, mark_triggers, token_agreement

    assert token_agreement([1, 2, 3], [1, 5, 3, 4]) == (0.5, 1)  # 2 of max(3, 4) positions; first diff at 1
    assert token_agreement([7, 8], [7, 8]) == (1.0, 2)
    assert token_agreement([], []) == (1.0, 0)
    ids = tok("one two three four", add_special_tokens=False)["input_ids"]
    marked = mark_triggers(tok, ids, [0])
    assert marked.count(MARK) == 1 and marked.replace(MARK, "") == tok.decode(ids)
    assert marked.startswith(tok.decode(ids[:1]) + MARK)


@pytest.mark.parametrize("name", ["dense", "dart"])
def test_drift_eval(tok, tmp_path, name):
    from dart.evals.drift import MARK, Drift

    m = model()
    m.generation_config.eos_token_id = None
    # a hair-trigger detector (tau = mu, windows of 2) so that a random model re-traces
    strategy = Dense() if name == "dense" else build_strategy("dart", retrace_tokens=None, sparsity=0.5, drift={"window": 2, "sigma_scale": 0.0,
                                                                          "min_margin": 0.0})
    ev = Drift(limit=2, max_new_tokens=20, chat=False)
    metrics = run(ev, context(m, tok, strategy, tmp_path))
    keys = {"rougeL_vs_dense", "bleu_vs_dense", "token_agreement", "first_difference", "triggers_per_sample",
            "new_tokens", "n"}
    keys |= {f"{k}_{e}" for k in ("rougeL_vs_dense", "bleu_vs_dense", "token_agreement", "triggers_per_sample")
             for e in ("lo", "hi")}
    assert set(metrics) == keys and all(isinstance(v, float) for v in metrics.values())
    for k in ("rougeL_vs_dense", "token_agreement"):  # bootstrap intervals around the means, over the 2 samples
        assert metrics[f"{k}_lo"] <= metrics[k] <= metrics[f"{k}_hi"]
    rows = [json.loads(x) for x in (tmp_path / "drift_samples.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1] and all(r["new_tokens"] == 20 for r in rows)
    assert metrics["new_tokens"] == 20.0
    assert metrics["triggers_per_sample"] == sum(len(r["triggers"]) for r in rows) / 2
    for r in rows:
        assert isinstance(r["text"], str) and isinstance(r["dense_text"], str)
        assert r["text_marked"].count(MARK) == len(r["triggers"])
        for e in r["windows"]:
            assert isinstance(e["step"], int) and isinstance(e["row"], int) and isinstance(e["request"], int)
            assert isinstance(e["cosine"], float) and isinstance(e["threshold"], float)
        assert all(t in r["windows"] for t in r["triggers"])  # a trigger is a window check that fired
        assert 0.0 <= r["token_agreement"] <= 1.0 and 0 <= r["first_difference"] <= 20
    if name == "dense":
        assert metrics["token_agreement"] == 1.0 and metrics["rougeL_vs_dense"] == 1.0
        assert metrics["bleu_vs_dense"] == pytest.approx(1.0) and metrics["first_difference"] == 20.0
        assert metrics["triggers_per_sample"] == 0.0 and all(r["windows"] == [] for r in rows)
    else:
        assert all(len(r["windows"]) >= 5 for r in rows)  # checks every 2 tokens once the mask is in place
        assert metrics["triggers_per_sample"] > 0
        assert all(t["cosine"] < t["threshold"] for r in rows for t in r["triggers"])
        assert all((tmp_path / r["plot"]).is_file() for r in rows)
        assert metrics["token_agreement"] < 1.0


def test_drift_eval_batches_rows(tok, tmp_path):
    """eval.batch_size: prompts generated together (left-padded) give each row's own text, windows and triggers, as
    one at a time."""
    from dart.evals.drift import Drift

    got = {}
    for bs in (1, 3):
        m = model()
        m.generation_config.eos_token_id = None
        strategy = build_strategy("dart", retrace_tokens=None, sparsity=0.5,
                                  drift={"window": 2, "sigma_scale": 0.0, "min_margin": 0.0})
        ev = Drift(limit=3, max_new_tokens=16, chat=False, batch_size=bs)
        run(ev, context(m, tok, strategy, tmp_path / str(bs)))
        got[bs] = [json.loads(x) for x in (tmp_path / str(bs) / "drift_samples.jsonl").read_text().splitlines()]
    for a, b in zip(got[1], got[3]):
        assert a["text"] == b["text"] and [t["step"] for t in a["triggers"]] == [t["step"] for t in b["triggers"]]
        assert [w["step"] for w in a["windows"]] == [w["step"] for w in b["windows"]]
    assert sum(len(r["triggers"]) for r in got[3]) > 0
