"""eval.matched (the main job's third column): after the run, a second strategy (static_prompt) is scored on the same
samples at the run's measured effective sparsity, against the same dense reference; results.json records the row
and the paired difference, the console table prints it. Tiny random Llama with the committed 1k BPE."""
from __future__ import annotations

import json

import pytest

from dart.compose import build_strategy
from dart.errors import ConfigError
from dart.evals.base import EvalContext
from tests.conftest import run_cli, tiny_llama

SMALL = dict(prefix=32, length=40, limit=6)


@pytest.fixture(scope="module")
def tok():
    from dart.models.tokenizers import tiny_tokenizer

    return tiny_tokenizer()


def model():
    # initializer_range 0.1: sharper next-token distributions, so KL is far above float noise
    return tiny_llama(layers=2, inter=64, vocab=1024, initializer_range=0.1)


def evaluate(ev, m, tok, strategy, tmp_path):
    """What dart.lit does for one run: set up, attach, every batch, finalize, detach."""
    ctx = EvalContext(model=m, tokenizer=tok, strategy=strategy, run_dir=tmp_path)
    ev.setup(ctx)
    strategy.attach(m, tok)
    try:
        metrics = ev.finalize([ev.step(b) for b in ev.batches()])
    finally:
        strategy.detach()
    return ctx, metrics


def test_matched_row_runs_at_the_runs_effective_sparsity_on_the_same_reference(tok, tmp_path):
    from dart.evals.dense_cache import MemoryCache
    from dart.evals.switch import Switch

    m = model()
    run = build_strategy("dart", sparsity=0.5, retrace_tokens=8, **{"drift.min_margin": 0.1})  # it re-traces
    ev = Switch(**SMALL, matched="static_prompt")
    ctx, metrics = evaluate(ev, m, tok, run, tmp_path)
    assert isinstance(ctx.dense_cache, MemoryCache) and ctx.dense_cache.misses == 6 and ctx.dense_cache.hits == 0
    eff = run.summary()["sparsity"]["effective"]
    by_kind = ev.effective_by_kind()
    assert by_kind["all"] == pytest.approx(eff, abs=1e-9) and 0.3 < eff < 0.5  # dense re-trace tokens: below 50%
    # the kinds' figures, weighted by their decoded tokens (40 per sample, 4 switch and 2 control pairs), are the run's
    assert (4 * by_kind["switch"] + 2 * by_kind["control"]) / 6 == pytest.approx(eff, abs=1e-9)
    targets = ev.matched_sparsities(run)
    assert targets == {"control": by_kind["control"], "switch": by_kind["switch"]}
    outputs = []
    for kind, sparsity in targets.items():  # each kind at its own effective sparsity (dart.pipeline does this)
        static = build_strategy("static_prompt", sparsity=sparsity)
        static.attach(m, tok)
        try:
            outputs += ev.score_kind(static, kind)
        finally:
            static.detach()
    row = ev.matched_row(outputs)
    assert ctx.dense_cache.hits == 6 and ctx.dense_cache.misses == 6  # the run's dense logits, read back, not recomputed
    for kind, sparsity in targets.items():
        assert row["effective_by_kind"][kind] == pytest.approx(sparsity, abs=1 / 64)  # one neuron of 64 at most
    mine = {o["index"]: o["kl"] for o in ev.extra["samples"]}
    theirs = {o["index"]: o["kl"] for o in row["samples"]}
    assert sorted(theirs) == sorted(mine) == list(range(6))  # the same samples
    for kind in ("switch", "control", "all"):
        n = row["metrics"][f"{kind}/n"]
        assert n == metrics[f"{kind}/n"] == row["paired"][f"{kind}/n"] > 0
        assert row["metrics"][f"{kind}/kl"] > 1e-3 and row["metrics"][f"{kind}/retraces"] == 0.0
        assert row["metrics"][f"{kind}/kl_lo"] <= row["metrics"][f"{kind}/kl"] <= row["metrics"][f"{kind}/kl_hi"]
        assert row["paired"][f"{kind}/kl"] == pytest.approx(metrics[f"{kind}/kl"] - row["metrics"][f"{kind}/kl"])
        assert row["paired"][f"{kind}/kl_lo"] <= row["paired"][f"{kind}/kl"] <= row["paired"][f"{kind}/kl_hi"]

    # the same strategy run on its own (its own dense reference, from the plain model) gives the same KL
    alone = Switch(**SMALL)
    sparsity = targets["switch"]
    _, own = evaluate(alone, m, tok, build_strategy("static_prompt", sparsity=sparsity), tmp_path)
    for o in alone.extra["samples"]:
        if o["kind"] == "switch":
            assert o["kl"] == pytest.approx(theirs[o["index"]], rel=1e-4, abs=2e-6)  # both rounded to 1e-6


def test_effective_sparsity_per_kind_from_hand_counts(tok, tmp_path):
    """A fixed mask of k of the 64 neurons of every layer skips exactly 1 - k/64 of every decoded token's work, on
    every kind; dense skips nothing; kinds mixed in a batch have no figure of their own."""
    from dart.evals.switch import Switch
    from dart.strategies import Dense

    m = model()
    ev = Switch(**SMALL)
    evaluate(ev, m, tok, build_strategy("static_prompt", sparsity=0.5), tmp_path)
    assert ev.effective_by_kind() == {"switch": 0.5, "control": 0.5, "all": 0.5}  # keep 32 of 64
    assert {o["effective"] for o in ev.extra["samples"]} == {0.5}
    ev = Switch(**SMALL)
    evaluate(ev, m, tok, build_strategy("static_prompt", sparsity=0.7), tmp_path)
    assert ev.effective_by_kind() == pytest.approx({"switch": 1 - 19 / 64, "control": 1 - 19 / 64, "all": 1 - 19 / 64})
    ev = Switch(**SMALL)
    evaluate(ev, m, tok, Dense(), tmp_path)
    assert ev.effective_by_kind() == {"switch": None, "control": None, "all": None}
    ev = Switch(**SMALL, batch_size=2)  # consecutive batches mix the kinds
    evaluate(ev, m, tok, build_strategy("static_prompt", sparsity=0.5), tmp_path)
    got = ev.effective_by_kind()
    assert got["all"] == 0.5 and (got["switch"] is None or got["control"] is None)


def test_nothing_to_match_is_a_note_not_a_row(tok, tmp_path):
    from dart.evals.switch import Switch
    from dart.strategies import Dense

    ev = Switch(**SMALL, matched="static_prompt")
    ctx, _ = evaluate(ev, model(), tok, Dense(), tmp_path)
    assert ctx.dense_cache is None  # no second pass to keep the reference for
    assert ev.matched_sparsities(Dense()) is None
    assert ev.notes == ["eval.matched=static_prompt: no matched rows, the run is strategy=dense"]
    assert Switch(**SMALL).matched == ()  # eval=switch: off unless asked
    assert Switch(**SMALL, matched=["static_prompt", "teal"]).matched == ("static_prompt", "teal")


@pytest.mark.parametrize("value", ["nope", "dense", True])
def test_bad_matched_is_one_line(value):
    from dart.evals.switch import Switch

    with pytest.raises(ConfigError, match=r"eval.matched=.* is not supported; allowed: .*static_prompt.*null") as e:
        Switch(matched=value)
    assert "\n" not in str(e.value) and "dense," not in str(e.value)


def test_cli_bad_matched_fails_before_the_model_loads(tmp_path):
    proc = run_cli("model=tiny_llama", "eval.matched=nope", "logger=none", f"hydra.run.dir={tmp_path}", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: eval.matched='nope' is not supported; allowed:")
    assert "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "failed"  # as every failed run


def test_main_job_prints_and_records_the_matched_row(tmp_path):
    """The main job's config (eval=overview: matched on), shrunk: results.json holds the row beside the run's own
    figures, written once; the console table has the third column and the one-line reading."""
    proc = run_cli("model=tiny_llama", "eval.limit=3", "eval.prefix=16", "eval.length=12", "logger=none",
                   f"hydra.run.dir={tmp_path}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["status"] == "complete" and res["config"]["eval"]["matched"] == ["static_prompt", "teal"]
    rows = res["matched"]
    assert [r["strategy"] for r in rows] == ["static_prompt", "teal"]
    for row in rows:
        assert row["ranking"] == res["config"]["ranking"]["name"]
        assert row["sparsity"]["target"] == res["sparsity"]["effective"]  # the run's measured effective sparsity
        for key in ("overview/all/kl", "overview/all/kl_lo", "overview/all/kl_hi", "overview/switch/ppl"):
            assert isinstance(row["metrics"][key], float), key
        assert set(row["metrics"]) == set(res["metrics"])  # the same figures as the run's own
        assert row["paired"]["overview/all/n"] == 3.0 and row["paired"]["overview/all/kl"] == pytest.approx(
            res["metrics"]["overview/all/kl"] - row["metrics"]["overview/all/kl"])
        assert [s["index"] for s in row["samples"]] == [s["index"] for s in res["eval"]["samples"]]
    static, teal = rows
    assert static["sparsity"]["effective"] == pytest.approx(static["sparsity"]["target"], abs=1 / 256)
    assert teal["sparsity"]["effective"] is not None  # TEAL's thresholds: its own measured sparsity
    assert res["timing"]["dense_cache"] == {"memory": True, "hits": 6, "misses": 3}  # one dense pass for all three
    assert res["timing"]["matched_s"] > 0
    out = proc.stdout
    assert "dart 50%" in out and f"static_prompt {100 * static['sparsity']['target']:.1f}%" in out
    assert f"teal {100 * teal['sparsity']['target']:.1f}%" in out
    assert "matched compute: KL dart - static_prompt, paired over the same 3 samples:" in out
    assert "matched compute: KL dart - teal, paired over the same 3 samples:" in out


def test_eval_switch_takes_matched_without_a_plus(tmp_path):
    proc = run_cli("model=tiny_llama", "eval=switch", "eval.limit=2", "eval.prefix=16", "eval.length=12",
                   "eval.matched=[teal]", "logger=none", f"hydra.run.dir={tmp_path}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert [r["strategy"] for r in res["matched"]] == ["teal"]


def test_console_reading_says_what_the_interval_says():
    from dart.report import matched_reading

    def results(d, lo, hi):
        return {"config": {"strategy": {"name": "dart"}},
                "matched": {"strategy": "static_prompt", "sparsity": {"target": 0.4551},
                            "paired": {"overview/all/kl": d, "overview/all/kl_lo": lo, "overview/all/kl_hi": hi,
                                       "overview/all/n": 24.0}}}

    [line] = matched_reading(results(-0.2, -0.3, -0.1))
    assert line == ("matched compute: KL dart - static_prompt, paired over the same 24 samples: -0.2 [-0.3, -0.1] at "
                    "45.5% effective sparsity: dart is closer to dense than static_prompt at the same effective sparsity")
    assert matched_reading(results(0.2, 0.1, 0.3))[0].endswith("static_prompt is closer to dense than dart at the same "
                                                            "effective sparsity")
    assert matched_reading(results(0.05, -0.1, 0.2))[0].endswith("+0.05 [-0.1, +0.2] at 45.5% effective sparsity: "
                                                              "no difference resolved at this n")
    assert matched_reading({"config": {}}) == []


def _run_with_matched() -> dict:
    return {"status": "complete", "schema": 1,
            "config": {"strategy": {"name": "dart"}, "sparsity": 0.5, "eval": {"name": "overview"},
                       "model": {"name": "smollm2_135m"}},
            "metrics": {"overview/switch/kl": 2.0, "overview/all/kl": 1.5},
            "sparsity": {"target": 0.5, "effective": 0.46, "effective_by_kind": {"switch": 0.45, "control": 0.49,
                                                                              "all": 0.46}},
            "matched": [{"strategy": "teal", "ranking": "max",
                         "sparsity": {"target": 0.46, "effective": 0.465, "by_kind": {
                             "switch": {"target": 0.45, "effective": 0.455}, "control": {"target": 0.49, "effective": 0.5},
                             "all": {"target": 0.46, "effective": 0.465}}},
                         "metrics": {"overview/switch/kl": 0.3, "overview/all/kl": 0.31},
                         "paired": {"overview/all/kl": 1.19, "overview/all/n": 24.0}, "samples": []}]}


def test_wandb_summary_holds_per_kind_sparsity_and_every_matched_row():
    from dart.results import flat_summary, matched_entries

    flat = flat_summary(_run_with_matched())
    assert flat["sparsity/effective/switch"] == 0.45 and flat["sparsity/effective/control"] == 0.49
    assert flat["matched/teal/overview/switch/kl"] == 0.3 and flat["matched/teal/paired/overview/all/kl"] == 1.19
    assert flat["matched/teal/sparsity/effective"] == 0.465 and flat["overview/all/kl"] == 1.5
    old = {"matched": {"strategy": "static_prompt"}}  # results written before eval.matched took a list
    assert matched_entries(old) == [{"strategy": "static_prompt"}] and matched_entries({}) == []


def test_tables_show_matched_rows_at_their_own_sparsity(tmp_path):
    from dart.results import write_json_atomic
    from dart.tables.collect import collect_folders
    from dart.tables.sparsity import effective

    write_json_atomic(tmp_path / "run" / "results.json", _run_with_matched())
    records = collect_folders([tmp_path]).records
    assert [r.strategy for r in records] == ["dart", "teal"]
    run, teal = records
    assert teal.config["matched_to"] == "dart 0.5" and teal.metrics["overview/switch/kl"] == 0.3
    assert effective(run, "switch") == 0.45 and effective(teal, "switch") == 0.455 and effective(teal) == 0.465
    assert effective(run, "user_kind") == 0.46  # not recorded for that subset: the run's over all samples
