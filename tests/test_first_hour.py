"""The first hour with dart (issue 12): signals end a run cleanly; bad model folders and prompt files fail in one
line; no third-party noise, plain progress and unwrapped paths off a terminal; W&B groups by the sweep folder;
the bench distrusts busy machines and impossible shares; random-weight builds say so wherever the model is named."""
from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import REPO, run_cli


# ----------------------------------------------------------------------------- SIGTERM / SIGUSR1
def test_sigterm_ends_a_run_at_the_next_forward_and_records_it(tmp_path):
    """A DART perplexity run over the whole news text (minutes on the tiny model); SIGTERM once it is evaluating."""
    from dart.results import is_complete, read_results

    args = [sys.executable, "-m", "dart.run", "model=tiny_llama", "eval=smoke", "eval.limit=null", "strategy=dart",
            "logger=none", "progress_s=0", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, WANDB_MODE="offline"))
    lines: list[str] = []
    started = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "[dart] smoke: step " in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(180), "".join(lines)[-3000:]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    err = proc.stderr.read()
    assert proc.returncode == 143, err[-3000:]
    assert elapsed < 5, elapsed
    res = read_results(tmp_path / "results.json")
    assert res["status"] == "failed" and res["error"] == "Terminated: terminated by SIGTERM"
    assert not is_complete(res, res["config_hash"])  # the same command recomputes it
    assert "error: terminated by SIGTERM" in err and "Traceback" not in err


def test_sigusr1_raises_terminated_at_the_next_forward():
    import torch

    from dart import signals
    from tests.conftest import tiny_llama

    model = tiny_llama()
    handle = signals.hook(model)
    ids = torch.tensor([[1, 2, 3]])
    try:
        model(ids)  # no signal: runs
        signals._handler(signal.SIGUSR1, None)  # what the installed handler does on SIGUSR1
        with pytest.raises(signals.Terminated, match="terminated by SIGUSR1") as info:
            model(ids)
        assert info.value.exit_code == 128 + signal.SIGUSR1
        assert not isinstance(info.value, Exception)  # no `except Exception` in an evaluator or library swallows it
    finally:
        handle.remove()
        signals.reset()
    model(ids)


# ----------------------------------------------------------------------------- bad model folders and prompts
def _folder(tmp_path: Path, kind: str) -> Path:
    import transformers

    path = tmp_path / kind
    if kind == "no_weights":
        transformers.LlamaConfig(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4).save_pretrained(path)
    elif kind == "t5":
        transformers.T5Config(vocab_size=128, d_model=16, d_ff=32, num_layers=1, num_heads=2).save_pretrained(path)
    elif kind == "bert":
        cfg = transformers.BertConfig(vocab_size=128, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32)
        transformers.BertForMaskedLM(cfg).save_pretrained(path)  # weights and all: it is the architecture that is wrong
    return path


@pytest.mark.parametrize("kind, expected", [
    ("no_weights", ["has config.json but no weights", "model.safetensors"]),
    ("t5", ["encoder-decoder", "'t5'", "llama", "gpt2"]),
    ("bert", ["'bert'", "BertForMaskedLM", "not a decoder-only causal LM", "llama", "gpt_neox"]),
])
def test_bad_model_folder_fails_in_one_line(tmp_path, kind, expected):
    folder = _folder(tmp_path, kind)
    proc = run_cli("model=tiny_llama", "eval=smoke", "logger=none", f"model.path={folder}",
                   f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: model.path='{folder}'"), proc.stderr
    for piece in expected:
        assert piece in err[0], err[0]


@pytest.mark.parametrize("content, expected", [
    (None, "does not exist"),
    ("template: [unclosed\n", "is not valid YAML at line 2"),
])
def test_bad_drift_prompts_file_fails_in_one_line(tmp_path, content, expected):
    path = tmp_path / "prompts.yaml"
    if content is not None:
        path.write_text(content)
    proc = run_cli("model=tiny_llama", "eval=drift", "logger=none", f"eval.prompts_file={path}",
                   f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: eval.prompts_file='{path}' {expected}"), proc.stderr
    assert "`template`" in err[0] and "`pairs`" in err[0]


@pytest.mark.parametrize("content, expected", [
    ("", "is empty"),
    ("# nothing but a comment\n", "is empty"),
    ("template: 'About {a} then {b}.'\n", "has no `template` text and `pairs` list"),
    ("template: 'About {a} then {b}.'\npairs: []\n", "empty `pairs` list"),
    ("template: 'About {a} then {c}.'\npairs:\n  - {a: x, b: y}\n", "does not fill from pairs[0] (KeyError: 'c')"),
    ("template: 'About {a} then {b}.'\npairs:\n  - {a: x, b: y}\n  - {a: '  ', b: y}\n", "pairs[1] gives an empty prompt text"),
    ("template: '{a}{b}'\npairs:\n  - {a: '', b: ''}\n", "pairs[0] gives an empty prompt text"),
])
def test_drift_prompts_file_checks(tmp_path, content, expected):
    from dart.errors import ConfigError
    from dart.evals.drift import load_prompts

    path = tmp_path / "p.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_prompts(path)
    assert str(info.value).startswith(f"eval.prompts_file='{path}'") and expected in str(info.value)
    assert "\n" not in str(info.value)


def test_drift_prompts_file_of_your_own_and_the_shipped_one(tmp_path):
    from dart.evals.drift import Drift, load_prompts

    path = tmp_path / "p.yaml"
    path.write_text("template: 'About {a}, then about {b}.'\npairs:\n  - {a: cats, b: dogs}\n")
    assert load_prompts(path) == ["About cats, then about dogs."]
    assert Drift(prompts_file=str(path)).prompts == ["About cats, then about dogs."]
    assert len(load_prompts()) == 12


def test_model_folder_checks_and_label_from_the_folder(tmp_path, monkeypatch):
    """A good folder loads and is labelled from its own config.json, not the config group it came through."""
    from omegaconf import OmegaConf

    from dart.errors import ConfigError, UnavailableError
    from dart.models.loading import check_model_folder, load_model
    from dart.models.tokenizers import tiny_tokenizer
    from tests.conftest import tiny_gpt2

    with pytest.raises(UnavailableError, match="is not a folder"):
        check_model_folder(tmp_path / "missing")
    with pytest.raises(ConfigError, match="has no config.json"):
        check_model_folder(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json cannot be read as JSON"):
        check_model_folder(tmp_path / "broken")

    good = tmp_path / "my-gpt2"
    model = tiny_gpt2(vocab=1024)
    model.save_pretrained(good)
    tok = tiny_tokenizer()
    tok.save_pretrained(good)
    assert check_model_folder(good)["model_type"] == "gpt2"
    cfg = OmegaConf.load(REPO / "conf" / "model" / "smollm2_135m.yaml")
    cfg.path = str(good)
    loaded = load_model(cfg, device="cpu")
    assert loaded.info["label"] == "my-gpt2 (GPT2LMHeadModel)" and loaded.info["architecture"] == "GPT2LMHeadModel"
    assert loaded.info["name"] == "smollm2_135m"  # the group it came through stays in the config, not in the label

    no_tok = tmp_path / "no-tokenizer"
    model.save_pretrained(no_tok)
    cfg.path = str(no_tok)
    with pytest.raises(ConfigError, match=r"has no tokenizer; expected .*tokenizer.json") as info:
        load_model(cfg, device="cpu")
    assert str(info.value).startswith(f"model.path='{no_tok}'")


# ----------------------------------------------------------------------------- quiet by default
def test_a_run_off_a_terminal_is_quiet_plain_and_keeps_paths_whole(tmp_path):
    run_dir = tmp_path / ("a-rather-long-folder-name-for-this-run-" * 3) / "run"
    proc = run_cli("model=tiny_llama", "eval=smoke", "strategy=dense", "logger=wandb", "progress_s=0", "sparsity=0.7",
                   f"hydra.run.dir={run_dir}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    for noise in ("anonymous setting has no effect", "isinstance(treespec, LeafSpec)", "Failed to initialize NumPy",
                  "Received SIGTERM", "Warning", "WARNING"):
        assert noise not in out, out[-3000:]
    lines = proc.stdout.splitlines()
    assert f"results: {run_dir / 'results.json'}" in lines  # one line, never wrapped at 80 columns
    assert any(line.startswith("[dart] smoke: step 1/2, ") and " elapsed, ETA " in line for line in lines)
    assert any(line.startswith("[dart] smoke: 2 steps done in ") for line in lines)
    assert "tiny_llama (tiny, random) | strategy=dense | eval=smoke" in lines  # dense: no sparsity in the title
    assert sum("strategy=dense ignores sparsity" in line for line in lines) == 1
    res = json.loads((run_dir / "results.json").read_text())
    assert any("strategy=dense ignores sparsity" in n for n in res["notes"])
    assert res["model"]["label"] == "tiny_llama (tiny, random)"


class _FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_plain_progress_prints_every_interval_with_eta():
    from dart.lit import PlainProgress
    from dart.progress import progress_line

    assert progress_line("ten", 3, 10, 90.0) == "[dart] ten: step 3/10, 1:30 elapsed, ETA 3:30"
    assert progress_line("ten", 0, 10, 5.0).endswith("ETA ?")
    assert progress_line("x", 1, 2, 3725.0) == "[dart] x: step 1/2, 1:02:05 elapsed, ETA 1:02:05"
    clock, stream = _FakeClock(), io.StringIO()
    cb = PlainProgress(interval_s=30, label="perplexity", clock=clock, stream=stream)
    trainer = SimpleNamespace(num_test_batches=[10])
    cb.on_test_start(trainer, None)
    for i in range(10):
        clock.t += 12.0  # 12 s per step: a line once 30 s have passed since the last one (steps 3, 6, 9)
        cb.on_test_batch_end(trainer, None, None, None, i)
    cb.on_test_end(trainer, None)
    assert stream.getvalue().splitlines() == [
        "[dart] perplexity: step 3/10, 0:36 elapsed, ETA 1:24",
        "[dart] perplexity: step 6/10, 1:12 elapsed, ETA 0:48",
        "[dart] perplexity: step 9/10, 1:48 elapsed, ETA 0:12",
        "[dart] perplexity: 10 steps done in 2:00",
    ]


def test_lm_eval_output_is_captured_into_the_run_log(tmp_path, capsys):
    from dart.evals.harness import Harness

    lm_logger = logging.getLogger("lm_eval.evaluator")
    before = (list(logging.getLogger("lm_eval").handlers), logging.getLogger("lm_eval").propagate)
    with Harness._captured(tmp_path / "lm_eval.log") as counts:
        for i in range(57):
            lm_logger.warning("Overwriting default num_fewshot of task_%d from 5 to 5", i)
        logging.getLogger("lm_eval.api.task").info("Building contexts")
        sys.stderr.write("loglikelihood: 100%|##########| 4/4\n")  # a progress bar
    assert counts == {"lines": 58, "warnings": 57}
    log = (tmp_path / "lm_eval.log").read_text()
    assert log.count("Overwriting default num_fewshot") == 57 and "Building contexts" in log and "loglikelihood" in log
    captured = capsys.readouterr()
    assert "Overwriting" not in captured.out + captured.err and "loglikelihood" not in captured.err
    assert (list(logging.getLogger("lm_eval").handlers), logging.getLogger("lm_eval").propagate) == before
    logging.getLogger("lm_eval.evaluator").warning("after")  # outside the capture nothing goes to the file
    assert "after" not in (tmp_path / "lm_eval.log").read_text()


def test_setup_installs_numpy_with_torch():
    """torch imported before numpy is installed warns "Failed to initialize NumPy" (setup.sh imports torch to check
    it): the torch install line installs numpy, at the pinned version, in the same pip call."""
    import re

    text = (REPO / "setup.sh").read_text()
    line = next(l for l in text.splitlines() if l.strip().startswith("pip install ${DART_TORCH"))
    assert '"$numpy_spec"' in line
    pin = re.search(r"^numpy==\S+", (REPO / "constraints.txt").read_text(), re.M)
    assert pin and "grep -m1 '^numpy==' constraints.txt" in text


# ----------------------------------------------------------------------------- W&B group
def test_wandb_group_defaults_to_the_sweep_folder_name():
    from omegaconf import OmegaConf

    from dart.pipeline import sweep_name_given, wandb_group

    assert wandb_group(None, multirun=False, sweep_name="x", sweep_name_given=True, sweep_dir="/a/b") is None
    assert wandb_group("mine", multirun=True, sweep_name="x", sweep_name_given=True, sweep_dir="/a/b") == "mine"
    # hydra.sweep.dir=/x/mysweep without sweep_name: every job of the sweep in group "mysweep", not a timestamp
    assert wandb_group(None, True, sweep_name="2026-11-29_20-01-00", sweep_name_given=False, sweep_dir="/x/mysweep") == "mysweep"
    assert wandb_group(None, True, sweep_name="2026-11-29_20-01-00", sweep_name_given=False, sweep_dir="/x/mysweep/") == "mysweep"
    # a sweep_name that was given (on the command line or by an experiment) wins
    assert wandb_group(None, True, sweep_name="ten_offline", sweep_name_given=True, sweep_dir="/x/mysweep") == "ten_offline"
    default = OmegaConf.load(REPO / "conf" / "config.yaml")
    assert not sweep_name_given(default)  # ${now:...}: the timestamp default
    default.sweep_name = "mine"
    assert sweep_name_given(default)


# ----------------------------------------------------------------------------- dart.bench
def _bench_result(load=0.3, cpus=2, shares=(0.88, 1.07)):
    rows = [{"loop": "lean", "mode": "dense", "sparsity": 0.0, "tokens_per_s": 17.5, "speedup": 1.0,
             "bytes_bound_limit": 1.0, "share_of_limit": None, "prefill_ms": 138, "remask_ms": 0.0}]
    for s, share in zip((0.5, 0.7), shares):
        rows.append({"loop": "lean", "mode": "compacted", "sparsity": s, "tokens_per_s": 20.0, "speedup": 1.3,
                     "bytes_bound_limit": 1.4, "share_of_limit": share, "prefill_ms": 140, "remask_ms": 20.0,
                     "token_agreement_with_dense": 0.1})
    return {"machine": {"processor": "x86_64", "cpu_count": cpus, "torch": "2.13", "torch_threads": cpus,
                        "loadavg_1m": load},
            "config": {"model": "m", "dtype": "float32", "device": "cpu", "batch_size": 1, "prompt_tokens": 64,
                       "new_tokens": 128, "repeats": 5, "warmup": 1},
            "rows": rows}


def test_bench_warns_on_a_busy_machine_and_flags_shares_above_the_limit():
    from dart.bench.report import annotate, load_warning, markdown

    assert load_warning(0.9, 2) is None  # 0.45 per core
    assert load_warning(1.1, 2).startswith("the machine was busy at the start: 1-minute load average 1.10 on 2 cores")
    assert load_warning(None, 2) is None

    quiet = annotate(_bench_result(load=0.2, shares=(0.88, 0.95)))
    assert quiet["warnings"] == [] and not any("flag" in r for r in quiet["rows"])
    assert "(!)" not in markdown(quiet) and "Warning" not in markdown(quiet)

    res = annotate(_bench_result(load=3.0, shares=(0.88, 1.07)))
    flagged = [r for r in res["rows"] if r.get("flag")]
    assert [r["sparsity"] for r in flagged] == [0.7] and "measurement error" in flagged[0]["flag"]
    assert "load_warning" in res["machine"] and len(res["warnings"]) == 2
    md = markdown(res)
    assert "| 107% (!) |" in md and "| 88% |" in md
    assert "(!) share of the bytes-bound limit above 100%: a measurement error" in md
    assert "Warning: the machine was busy at the start: 1-minute load average 3.00 on 2 cores (1.50 per core" in md
    json.dumps(res)  # the JSON carries the flag and the warnings


# ----------------------------------------------------------------------------- labels
def test_random_builds_are_labelled_as_such_everywhere(monkeypatch):
    from omegaconf import OmegaConf

    from dart.models.loading import load_model
    from dart.report import title
    from dart.models.names import model_label, model_name, model_sort_key

    rnd = {"name": "llama3_8b", "init": "random", "source": "hub", "num_layers": 2}
    assert model_label(rnd) == "Llama-3.1-8B shape, random, 2 layers"
    assert model_name(rnd) == "Llama-3.1-8B shape, random, 2 layers"  # dart.tables, given the config's model section
    assert model_label(dict(rnd, num_layers=1)) == "Llama-3.1-8B shape, random, 1 layer"
    assert model_label({"name": "llama3_8b", "init": "pretrained", "source": "hub"}) == "Llama-3.1-8B"
    assert model_name("llama3_8b") == "Llama-3.1-8B"
    assert model_label({"name": "smollm2_135m", "path": "/data/My-Llama/"}) == "My-Llama (local folder)"
    assert model_label({"name": "x"}, {"label": "folder (LlamaForCausalLM)"}) == "folder (LlamaForCausalLM)"
    assert model_sort_key("Llama-3.1-8B shape, random, 2 layers")[0] == model_sort_key("llama3_8b")[0] == 0

    # the model section of results.json: a small llama3_8b-shaped build (the embedded tokenizer needs 49k tokens)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = OmegaConf.load(REPO / "conf" / "model" / "llama3_8b.yaml")
    cfg.update(init="random", num_layers=2, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2,
               head_dim=8, vocab_size=49152)
    info = load_model(cfg, device="cpu").info
    assert info["label"] == "Llama-3.1-8B shape, random, 2 layers" and info["init"] == "random"

    results = {"config": {"model": OmegaConf.to_container(cfg), "strategy": {"name": "dart"}, "sparsity": 0.7,
                          "eval": {"name": "smoke"}}, "model": info}
    assert title(results) == "Llama-3.1-8B shape, random, 2 layers | strategy=dart | sparsity=0.7 | eval=smoke"
    results["config"]["strategy"]["name"] = "dense"
    assert title(results) == "Llama-3.1-8B shape, random, 2 layers | strategy=dense | eval=smoke"
