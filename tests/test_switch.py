"""eval=switch (dart.evals.switch), the drift benchmark at scale, and the bootstrap intervals it reports
(dart.stats): pairs built from the offline real text (300 ABC news, 90 Wikipedia articles) in both orders plus
same-document controls; dense is exact; re-traces are counted per sample; a user's pairs file fails in one line
naming the file and the line. Tiny random Llama with the committed 1k BPE (tests/conftest.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli, tiny_llama  # noqa: E402
from dart.errors import ConfigError  # noqa: E402
from dart.evals.base import EvalContext  # noqa: E402
from dart.stats import (binary_stderr, bits, bootstrap_ci, from_bits, paired_diff_ci,  # noqa: E402
                           paired_ratio, stderr)
from dart.strategies import Dense  # noqa: E402
from dart.compose import build_strategy  # noqa: E402

SMALL = dict(prefix=16, length=12)


@pytest.fixture(scope="module")
def tok():
    from dart.models.tokenizers import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="module")
def docs(tok):
    from dart.data.texts import news_articles, wiki_documents

    enc = lambda t: tok(t, add_special_tokens=False, verbose=False)["input_ids"]  # noqa: E731
    return {"news": [enc(d) for d in news_articles()], "wiki": [enc(d) for d in wiki_documents()]}


def model(**kw):
    return tiny_llama(layers=2, inter=64, vocab=1024, **kw)


def context(m, tokenizer, strategy, tmp_path):
    if strategy.name != "dense":
        strategy.attach(m, tokenizer)
    return EvalContext(model=m, tokenizer=tokenizer, strategy=strategy, run_dir=tmp_path)


def run(ev, ctx):
    ev.setup(ctx)
    return ev.finalize([ev.step(b) for b in ev.batches()])


# ============================================================================ the built-in pairs
@pytest.fixture(scope="module")
def builtin(tok, tmp_path_factory, docs):
    from dart.evals.switch import Switch

    ev = Switch()  # the defaults: 200 + 200 tokens, 120 switch pairs, 40 controls
    ev.setup(context(model(), tok, Dense(), tmp_path_factory.mktemp("switch")))
    return ev


def test_builtin_pairs_from_the_real_offline_texts(builtin, docs):
    samples = builtin._samples
    assert len(samples) == 160 and builtin.extra["pairs"]["counts"] == {
        "news->wiki": 60, "wiki->news": 60, "news->news": 20, "wiki->wiki": 20}
    kinds = [s["kind"] for s in samples]
    assert kinds.count("switch") == 120 >= 100 and kinds.count("control") == 40
    for s in samples:
        (a_src, a), (b_src, b) = s["a"], s["b"]
        assert len(s["tokens"]) == 400
        if s["kind"] == "switch":  # A: the start of one source's document, B: the start of the other source's
            assert a_src != b_src and s["order"] == f"{a_src}->{b_src}"
            assert s["tokens"] == docs[a_src][a][:200] + docs[b_src][b][:200]
        else:  # control: B is the next part of A's own article
            assert (a_src, a) == (b_src, b) and s["tokens"] == docs[a_src][a][:400]
    for order in ("news->wiki", "wiki->news"):  # enough long documents: none repeats inside an order
        chosen = [s for s in samples if s["order"] == order]
        assert len({tuple(s["a"]) for s in chosen}) == 60 == len({tuple(s["b"]) for s in chosen})
    assert len({tuple(s["a"]) for s in samples if s["kind"] == "control"}) == 40
    # the kinds are interleaved: the first 8 pairs (eval.limit=8) hold every order
    assert {s["order"] for s in samples[:8]} == {"news->wiki", "wiki->news", "news->news", "wiki->wiki"}


def test_builtin_pairs_are_deterministic(builtin, docs):
    from dart.evals.switch import builtin_pairs

    again = builtin_pairs(docs["news"], docs["wiki"], 200, 200, 120, 40, seed=0)
    assert [s["tokens"] for s in again] == [s["tokens"] for s in builtin._samples]
    other = builtin_pairs(docs["news"], docs["wiki"], 200, 200, 120, 40, seed=1)
    assert [s["a"] for s in other] != [s["a"] for s in again]


def test_limit_takes_the_first_pairs(tok, tmp_path, builtin):
    from dart.evals.switch import Switch

    ev = Switch(limit=10)
    ev.setup(context(model(), tok, Dense(), tmp_path))
    assert [s["tokens"] for s in ev._samples] == [s["tokens"] for s in builtin._samples[:10]]


# ============================================================================ metrics
def test_dense_is_exact(tok, tmp_path):
    from dart.evals.switch import SAMPLES_FILE, Switch

    ev = Switch(**SMALL, limit=6)
    metrics = run(ev, context(model(), tok, Dense(), tmp_path))
    for kind in ("switch", "control", "all"):
        assert metrics[f"{kind}/kl"] == metrics[f"{kind}/kl_lo"] == metrics[f"{kind}/kl_hi"] == 0.0
        assert metrics[f"{kind}/top1"] == metrics[f"{kind}/top1_lo"] == metrics[f"{kind}/top1_hi"] == 1.0
        assert metrics[f"{kind}/ppl"] == pytest.approx(metrics[f"{kind}/ppl_dense"], rel=1e-6)
        assert 100 < metrics[f"{kind}/ppl_dense"] < 10000  # a random 1k-vocabulary model: about uniform
        assert metrics[f"{kind}/retraces"] == 0.0
    assert (metrics["switch/n"], metrics["control/n"], metrics["all/n"]) == (4.0, 2.0, 6.0)
    rows = [json.loads(line) for line in (tmp_path / SAMPLES_FILE).read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(6)) and all(r["tokens_scored"] == 12 for r in rows)
    assert {r["kind"] for r in rows} == {"switch", "control"} and all(r["kl"] == 0.0 for r in rows)
    assert ev.extra["per_sample"] == SAMPLES_FILE and ev.extra["bootstrap"]["resamples"] == 2000


def test_pruned_model_diverges_and_retraces_are_counted_per_sample(tok, tmp_path):
    from dart.evals.switch import Switch

    strategy = build_strategy("dart", retrace_tokens=None, **{"drift.min_margin": 0.1}, sparsity=0.5)  # the drift detector on
    ev = Switch(prefix=32, length=40, limit=8)
    # initializer_range 0.1 (default 0.02): sharper next-token distributions, so KL is far above float noise
    ev.setup(context(model(initializer_range=0.1), tok, strategy, tmp_path))
    outputs = [ev.step(s) for s in ev.batches()]
    metrics = ev.finalize(outputs)
    triggers = strategy.drift_log()[1]
    assert sum(o["retraces"] for batch in outputs for o in batch) == len(triggers) > 0  # every trigger counted once, in its sample
    assert metrics["all/retraces"] == pytest.approx(len(triggers) / 8)
    for kind in ("switch", "control"):
        assert metrics[f"{kind}/kl"] > 5e-3 and 0.0 < metrics[f"{kind}/top1"] < 1.0
        assert metrics[f"{kind}/kl_lo"] <= metrics[f"{kind}/kl"] <= metrics[f"{kind}/kl_hi"]
        assert metrics[f"{kind}/ppl_lo"] <= metrics[f"{kind}/ppl"] <= metrics[f"{kind}/ppl_hi"]
    assert metrics["all/n"] == 8.0 and metrics["switch/n"] + metrics["control/n"] == 8.0
    strategy.detach()


# ============================================================================ your own pairs
def write_pairs(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


LONG = "The committee met on Tuesday to discuss the budget for the coming year and the state of the roads. " * 3


def test_user_pairs(tok, tmp_path):
    from dart.evals.switch import Switch

    pairs = write_pairs(tmp_path / "pairs.jsonl", [json.dumps({"a": LONG, "b": "Photosynthesis " + LONG}), "",
                                                   json.dumps({"a": LONG, "b": LONG, "kind": "control"})])
    ev = Switch(**SMALL, pairs=str(pairs))
    metrics = run(ev, context(model(), tok, Dense(), tmp_path))
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert [s["tokens"] for s in ev._samples] == [enc(LONG)[:16] + enc("Photosynthesis " + LONG)[:12],
                                                  enc(LONG)[:16] + enc(LONG)[:12]]
    assert [(s["kind"], s["a"]) for s in ev._samples] == [("user", ("line", 1)), ("control", ("line", 3))]
    assert metrics["user/n"] == metrics["control/n"] == 1.0 and metrics["all/n"] == 2.0
    assert "switch/kl" not in metrics and metrics["all/kl"] == 0.0
    assert ev.extra["pairs"]["source"] == str(pairs)


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("\n\n", "is empty"),
    ('{"a": "x", "b": "y"}\n{"a": "x", "b": ', "line 2 is not valid JSON"),
    ('["a", "b"]', "line 1 is a JSON list, not an object"),
    ('{"a": "x", "b": "y"}\n\n{"a": "x"}', "line 3 has no 'b'"),
    ('{"a": "  ", "b": "y"}', "line 1: 'a' must be a non-empty text"),
    ('{"a": "x", "b": 3}', "line 1: 'b' must be a non-empty text"),
])
def test_pairs_file_errors_are_one_line(tmp_path, content, message):
    from dart.evals.switch import Switch

    path = tmp_path / "pairs.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as e:
        Switch(pairs=str(path))  # before any model loads
    text = str(e.value)
    assert "\n" not in text and f"eval.pairs='{path}'" in text and message in text, text
    assert 'expected a JSONL file with one {"a": "<text A>", "b": "<text B>"} object per line' in text


def test_pairs_text_too_short_names_line_and_counts(tok, tmp_path):
    from dart.evals.switch import Switch

    short = "A short text."
    path = write_pairs(tmp_path / "pairs.jsonl", [json.dumps({"a": LONG, "b": LONG}), json.dumps({"a": LONG, "b": short})])
    ev = Switch(**SMALL, pairs=str(path))
    with pytest.raises(ConfigError) as e:
        ev.setup(context(model(), tok, Dense(), tmp_path))
    n = len(tok(short, add_special_tokens=False)["input_ids"])
    assert str(e.value) == f"eval.pairs='{path}': line 2: text 'b' has {n} tokens, needs at least eval.length=12"


def test_bad_lengths_are_config_errors():
    from dart.evals.switch import Switch

    with pytest.raises(ConfigError, match=r"eval.prefix=0 must be an integer >= 1"):
        Switch(prefix=0)
    with pytest.raises(ConfigError, match="no pairs to evaluate"):
        Switch(switch_pairs=0, controls=0)


def test_cli_smoke_run(tmp_path):
    proc = run_cli("model=tiny_llama", "eval=switch", "eval.limit=3", "eval.prefix=16", "eval.length=12", "strategy=dart",
                   "sparsity=0.5", "logger=none", f"hydra.run.dir={tmp_path}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["status"] == "complete" and res["metrics"]["switch/all/n"] == 3.0
    assert res["metrics"]["switch/switch/n"] == 2.0 and res["metrics"]["switch/control/n"] == 1.0
    assert res["eval"]["per_sample"] == "switch_samples.jsonl"
    assert len((tmp_path / "switch_samples.jsonl").read_text().splitlines()) == 3


# ============================================================================ bootstrap intervals (dart.stats)
def test_bootstrap_of_constant_data_has_zero_width():
    assert bootstrap_ci([0.25] * 30) == (0.25, 0.25)
    assert bootstrap_ci([3.0]) == (3.0, 3.0) and bootstrap_ci([]) is None
    assert paired_diff_ci([1, 0, 1], [1, 0, 1]) == (0.0, 0.0)


def test_paired_ratio_is_the_median_of_per_repeat_ratios():
    # repeats of 2.0 s, 4.0 s, 3.0 s against 1.0 s, 2.0 s, 2.0 s: ratios 2, 2, 1.5 (a zero denominator is skipped)
    med, ratios, ci = paired_ratio([2.0, 4.0, 3.0, 5.0], [1.0, 2.0, 2.0, 0.0])
    assert ratios == [2.0, 2.0, 1.5] and med == 2.0
    assert ci == bootstrap_ci([2.0, 2.0, 1.5], statistic="median") and 1.5 <= ci[0] <= ci[1] == 2.0
    assert paired_ratio([1.0], [2.0]) == (0.5, [0.5], None) and paired_ratio([], []) == (None, [], None)


def test_bootstrap_of_two_values_by_hand():
    # resampled means of [0, 1] are 0, 0.5, 1 with probability 1/4, 1/2, 1/4: the 2.5% and 97.5% percentiles are 0, 1
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)


def test_bootstrap_matches_the_normal_interval_on_many_items():
    data = [1.0] * 120 + [0.0] * 280  # p = 0.3, n = 400: normal half-width 1.96 sqrt(0.21 / 400) = 0.0449
    lo, hi = bootstrap_ci(data)
    assert lo < 0.3 < hi
    assert lo == pytest.approx(0.3 - 0.0449, abs=0.006) and hi == pytest.approx(0.3 + 0.0449, abs=0.006)
    assert bootstrap_ci(data) == (lo, hi)  # fixed seed: the same interval every time
    assert bootstrap_ci(data, seed=1) != (lo, hi)
    assert bootstrap_ci(data, level=0.5)[1] - bootstrap_ci(data, level=0.5)[0] < hi - lo


def test_stderr_helpers():
    xs = [1, 1, 0, 1, 0, 0, 0, 1, 1, 1]
    assert stderr(xs) == pytest.approx(binary_stderr(0.6, 10))  # exact for 0/1 items: sqrt(0.24 / 9)
    assert binary_stderr(0.6, 10) == pytest.approx((0.24 / 9) ** 0.5)
    assert stderr([1.0]) is None and binary_stderr(0.5, 1) is None
    assert from_bits(bits(xs)) == [float(x) for x in xs] and bits(xs) == "1101000111"
    with pytest.raises(ValueError):
        bits([0.5])


@pytest.mark.parametrize("batch_mask", ["per_row", "shared"])
def test_batches_of_samples(tok, tmp_path, batch_mask):
    """eval.batch_size: per_row masks give every sample's numbers of batch size 1 (each row its own masks), and the
    re-traces are counted in the row they happened in; shared masks (one set for the batch) differ."""
    from dart.evals.switch import Switch

    results = {}
    for bs in (1, 4):
        strategy = build_strategy("dart", retrace_tokens=None, batch_mask=batch_mask, sparsity=0.5,
                                  drift={"min_margin": 0.0, "sigma_scale": 0.0, "window": 3})
        ev = Switch(prefix=32, length=40, limit=8, batch_size=bs)
        ev.setup(context(model(initializer_range=0.1), tok, strategy, tmp_path / f"{batch_mask}{bs}"))
        outputs = [o for batch in [ev.step(b) for b in ev.batches()] for o in batch]
        assert sum(o["retraces"] for o in outputs) == len(strategy.drift_log()[1])
        results[bs] = outputs
        strategy.detach()
    one, four = results[1], results[4]
    same = all(abs(a["kl"] - b["kl"]) < 1e-4 and a["retraces"] == b["retraces"] for a, b in zip(one, four))
    assert same == (batch_mask == "per_row")
    assert sum(o["retraces"] for o in four) > 0


# ============================================================================ eval.batching
def test_make_batches_by_hand():
    """consecutive: list order; clean: one group per batch, no document twice, first fit in list order."""
    from dart.evals.batching import make_batches

    s = [("g", {1, 2}), ("g", {2, 3}), ("h", {4}), ("g", {4, 5}), ("g", {1, 6}), ("h", {5}), ("g", {7, 8})]
    assert make_batches(s, 3) == [s[0:3], s[3:6], s[6:]]
    clean = make_batches(s, 3, "clean", group=lambda x: x[0], documents=lambda x: x[1])
    # s1 shares doc 2 with s0 -> a new batch; s3 joins s0; s4 (doc 1) cannot join s0's, joins s1's; s6 fills s0's
    assert clean == [[s[0], s[3], s[6]], [s[1], s[4]], [s[2], s[5]]]
    assert make_batches(s, 1, "clean", group=lambda x: x[0], documents=lambda x: x[1]) == \
        [[s[0]], [s[1]], [s[3]], [s[4]], [s[6]], [s[2]], [s[5]]]
    with pytest.raises(ConfigError, match=r"eval.batching='mixed'.*consecutive, clean"):
        make_batches(s, 3, "mixed")
    with pytest.raises(ConfigError, match=r"eval.batch_size=0 must be an integer >= 1"):
        make_batches(s, 0)


def test_clean_batches_of_builtin_pairs(tok, tmp_path):
    """Built-in pairs under eval.batching=clean: every sample once, each batch one pair order and no document read
    twice; the default (consecutive) batches mix orders (a row's continuation genre among other rows' prompts)."""
    from dart.evals.switch import Switch

    leaks = {}
    for batching in ("consecutive", "clean"):
        ev = Switch(**SMALL, limit=48, batch_size=8, batching=batching)
        ev.setup(context(model(), tok, Dense(), tmp_path))
        batches = ev.batches()
        assert sorted(s["index"] for b in batches for s in b) == list(range(48))
        assert max(len(b) for b in batches) == 8
        mixed = sum(len({s["order"] for s in b}) > 1 for b in batches)
        twice = sum(len({d for s in b for d in {tuple(s["a"]), tuple(s["b"])}}) <
                    sum(len({tuple(s["a"]), tuple(s["b"])}) for s in b) for b in batches)
        leaks[batching] = (mixed, twice)
        assert ev.extra["pairs"]["batching"] == batching
        assert ev.extra["pairs"]["batch_sizes"] == [len(b) for b in batches]
    assert leaks["clean"] == (0, 0)
    assert leaks["consecutive"][0] == 6  # all 6 consecutive batches of 8 mix orders


def test_per_row_numbers_do_not_depend_on_batching(tok, tmp_path):
    """per_row masks: clean batches of 4 give every sample its batch-1 numbers (the batching only prices shared)."""
    from dart.evals.switch import Switch

    by = {}
    for bs, batching in ((1, "consecutive"), (4, "clean")):
        strategy = build_strategy("dart", retrace_tokens=None, sparsity=0.5,
                                  drift={"min_margin": 0.0, "sigma_scale": 0.0, "window": 3})
        ev = Switch(prefix=32, length=40, limit=8, batch_size=bs, batching=batching)
        ev.setup(context(model(initializer_range=0.1), tok, strategy, tmp_path / f"{batching}{bs}"))
        by[batching] = {o["index"]: o for b in ev.batches() for o in ev.step(b)}
        strategy.detach()
    assert by["clean"].keys() == by["consecutive"].keys()
    for i, o in by["consecutive"].items():
        assert abs(o["kl"] - by["clean"][i]["kl"]) < 1e-4 and o["retraces"] == by["clean"][i]["retraces"]


def test_fidelity_clean_batches(tok, tmp_path):
    """eval=fidelity consecutive batches put a switch row beside the row whose prompt it continues into; clean ones
    hold one segment and no document twice."""
    from dart.evals.fidelity import Fidelity

    for batching in ("consecutive", "clean"):
        ev = Fidelity(documents="news", prefix=16, length=12, limit=8, batch_size=4, batching=batching)
        ev.setup(context(model(), tok, Dense(), tmp_path))
        batches = ev.batches()
        assert sorted((s[0], s[1]) for b in batches for s in b) == sorted((s[0], s[1]) for s in ev._samples)
        clean = all(len({s[0] for s in b}) == 1 and sum(len(s[3]) for s in b) == len(set().union(*(s[3] for s in b)))
                    for b in batches)
        assert clean == (batching == "clean")
    assert [len(b) for b in batches] == [4, 4, 4, 4]  # first fit: switch rows {0,1},{2,3},{4,5},{6,7} and the rest
