"""`--model dart` in lm-eval's own command line: a tiny random Llama saved to a folder with a tokenizer, pruned by
DART at 70%, scored on an offline task."""
from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    import torch
    import transformers

    from dart.models.tokenizers import tiny_tokenizer

    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _cli(monkeypatch, *argv: str) -> None:
    from lm_eval.__main__ import cli_evaluate

    monkeypatch.setattr(sys, "argv", ["lm_eval", *argv])
    cli_evaluate()


def test_lm_eval_cli_runs_the_pruned_model(tiny_folder, tmp_path, monkeypatch):
    import dart.lm_eval_plugin as plugin
    from dart.evals.tasks import offline_tasks_dir

    made = []
    original = plugin.DartPrunedLM.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(plugin.DartPrunedLM, "__init__", spy)
    out = tmp_path / "out"
    # no --device: lm-eval's default is cuda:0, which falls back to what this machine has
    _cli(monkeypatch, "--model", "dart",
         "--model_args", f"pretrained={tiny_folder},strategy=dart,sparsity=0.7,masking_step=2",
         "--tasks", "offline_boolq", "--include_path", str(offline_tasks_dir()), "--limit", "2",
         "--output_path", str(out))
    (lm,) = made
    assert lm.strategy.name == "dart" and lm.dart_info["knobs"] == {"masking_step": 2}
    assert lm.dart_info["model"]["label"] == "tiny-llama (LlamaForCausalLM)"
    summary = lm.strategy.summary()
    assert summary["sparsity"]["achieved"] == pytest.approx(0.7, abs=0.02)  # the FFNs really ran pruned
    assert summary["overhead"]["tokens_seen"] > 0
    (path,) = out.rglob("results_*.json")
    res = json.loads(path.read_text())
    assert res["config"]["model"] == "dart"
    assert 0.0 <= res["results"]["offline_boolq"]["acc,none"] <= 1.0
    assert res["n-samples"]["offline_boolq"]["effective"] == 2


def test_bad_model_args_fail_in_one_line(tiny_folder, capsys):
    from dart.errors import ConfigError
    from dart.lm_eval_plugin import DartPrunedLM, build_strategy, main

    args = ["--model", "dart", "--tasks", "offline_boolq", "--include_path", "dart:offline", "--limit", "1"]
    assert main([*args, "--model_args", f"pretrained={tiny_folder},strategy=dart,masking_stpe=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: model_args masking_stpe=2 is not a knob of strategy=dart") and "masking_step" in err
    with pytest.raises(ConfigError, match="strategy='magic' is not supported; allowed: .*griffin"):
        build_strategy("magic")
    with pytest.raises(ConfigError, match=r"sparsity=1.5 is outside \[0, 1\)"):
        build_strategy("dart", sparsity=1.5)
    assert build_strategy("dart", sparsity=0.6, **{"drift.enabled": False}).summary()["strategy"]["name"] == "dart"
    with pytest.raises(ConfigError, match=f"^pretrained='{tiny_folder.parent}' has no config.json"):
        DartPrunedLM(pretrained=str(tiny_folder.parent))


def test_console_script_is_installed():
    """lm-eval 0.4.x has no plugin entry-point group; `dart-lm-eval` is lm-eval's CLI with the plugin imported."""
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "dart-lm-eval"]
    assert ep.value == "dart.lm_eval_plugin:main"
    # installed beside the interpreter running the tests (the project's environment has the package installed)
    assert (Path(sys.executable).parent / "dart-lm-eval").is_file(), Path(sys.executable).parent


@pytest.mark.parametrize("strategy", ["dart", "dart_published", "dart_plus", "static_prompt", "griffin", "static",
                                      "cats", "dense"])
def test_every_strategy_builds_for_lm_eval(strategy, tiny_folder):
    """Every conf/strategy builds as `--model dart` builds it, with the spec `python -m dart.run` composes (the YAML's
    defaults list applied: dart_published and dart_plus used to reach lm-eval as plain dicts and fail)."""
    import dataclasses

    from dart.compose import build_strategy
    from dart.lm_eval_plugin import DartPrunedLM

    lm = DartPrunedLM(pretrained=str(tiny_folder), strategy=strategy, sparsity=0.5)
    assert lm.strategy.name == strategy
    if hasattr(lm.strategy, "spec"):
        assert dataclasses.asdict(lm.strategy.spec) == dataclasses.asdict(build_strategy(strategy, sparsity=0.5).spec)
    lm.strategy.detach()


def test_dart_published_through_the_cli(tiny_folder, tmp_path, monkeypatch):
    import dart.lm_eval_plugin as plugin
    from dart.evals.tasks import offline_tasks_dir

    made = []
    original = plugin.DartPrunedLM.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(plugin.DartPrunedLM, "__init__", spy)
    _cli(monkeypatch, "--model", "dart", "--model_args", f"pretrained={tiny_folder},strategy=dart_published,sparsity=0.5",
         "--tasks", "offline_boolq", "--include_path", str(offline_tasks_dir()), "--limit", "1",
         "--output_path", str(tmp_path / "out"))
    (lm,) = made
    assert lm.strategy.name == "dart_published" and lm.strategy.spec.published_quirks


@pytest.mark.parametrize("strategy", ["dart", "dense"])
def test_use_cache_records_and_reuses_the_pruned_scores(strategy, tiny_folder, tmp_path, monkeypatch):
    """lm-eval's --use_cache: DartLM writes every log-likelihood through the cache hook as HFLM does, and a second run
    takes them from the cache (the model is never called)."""
    import lm_eval
    from sqlitedict import SqliteDict

    from dart.evals.tasks import offline_tasks_dir
    from dart.lm_eval_plugin import DartPrunedLM

    calls = []

    class Hook:
        def add_partial(self, attr, req, res):
            calls.append((attr, req, res))

    lm = DartPrunedLM(pretrained=str(tiny_folder), strategy=strategy, sparsity=0.5)
    lm.set_cache_hook(Hook())
    reqs = [(("ctx a", " b"), [5, 6, 7, 8], [9]), (("ctx a", " c d"), [5, 6, 7, 8], [10, 11]), ((None), [3, 4], [5])]
    got = lm._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert [(a, r) for a, r, _ in calls] == [("loglikelihood", ("ctx a", " b")), ("loglikelihood", ("ctx a", " c d"))]
    assert [v for _, _, v in calls] == got[:2]
    lm.strategy.detach()

    from lm_eval.tasks import TaskManager

    db = tmp_path / "cache"
    manager = TaskManager(include_path=str(offline_tasks_dir()), include_defaults=False)
    first = DartPrunedLM(pretrained=str(tiny_folder), strategy=strategy, sparsity=0.5)
    r1 = lm_eval.simple_evaluate(model=first, tasks=["offline_boolq"], limit=2, use_cache=str(db), task_manager=manager)
    files = list(tmp_path.glob("cache*.db"))
    assert files and len(SqliteDict(str(files[0]))) == 4  # 2 documents x 2 choices
    second = DartPrunedLM(pretrained=str(tiny_folder), strategy=strategy, sparsity=0.5)
    monkeypatch.setattr(type(second), "_loglikelihood_tokens", lambda *a, **k: pytest.fail("not taken from the cache"))
    r2 = lm_eval.simple_evaluate(model=second, tasks=["offline_boolq"], limit=2, use_cache=str(db), task_manager=manager)
    assert r1["results"]["offline_boolq"]["acc,none"] == r2["results"]["offline_boolq"]["acc,none"]
