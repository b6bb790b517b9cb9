"""The command line: clear, early errors for bad values; the offline hub failure; W&B offline; multirun."""
from __future__ import annotations

import json
import time

import pytest

from tests.conftest import REPO, run_cli


@pytest.mark.parametrize(
    "override, expected",
    [
        ("sparsity=1.5", ["sparsity=1.5", "[0, 1)"]),
        ("sparsity=-0.1", ["sparsity=-0.1", "[0, 1)"]),
        ("model=nope", ["model/nope", "smollm2_135m", "llama3_8b"]),
        ("eval=nope", ["eval/nope", "perplexity"]),
        ("strategy=nope", ["strategy/nope", "dart", "griffin"]),
        ("dtype=float8", ["dtype='float8'", "bfloat16"]),
        ("strategy=dart strategy.allocation=magic", ["strategy.allocation='magic'", "uniform", "auto"]),
        ("strategy=dart strategy.masking_step=0", ["masking_step=0", "protocol=compat"]),
    ],
)
def test_bad_values_fail_early_with_the_allowed_ones(override, expected, tmp_path):
    t0 = time.perf_counter()
    proc = run_cli(*override.split(), "logger=none", f"hydra.run.dir={tmp_path}", timeout=120)
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0
    err = proc.stderr + proc.stdout
    for piece in expected:
        assert piece in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "results.json").exists() or json.loads((tmp_path / "results.json").read_text())["status"] == "failed"
    assert elapsed < 60  # no model was loaded (loading would take far longer on the 8B configs)


def test_hub_model_offline_fails_with_ways_out(tmp_path):
    proc = run_cli("model=llama3_8b", "logger=none", f"hydra.run.dir={tmp_path}", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    err = proc.stderr
    assert "meta-llama/Llama-3.1-8B" in err and "model.path=" in err and "model.init=random" in err
    assert "smollm2_135m" in err and "Traceback" not in err


def test_unreachable_hub_is_detected_in_seconds_not_after_download_retries(monkeypatch):
    """The real probe (no HF_HUB_OFFLINE): one TCP connect with a 3 s timeout, never huggingface_hub's retries.
    In-process, so interpreter start-up and imports on a loaded CI machine do not count."""
    from omegaconf import OmegaConf

    from dart.errors import UnavailableError
    from dart.hub import hub_reachable
    from dart.models.loading import check_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if hub_reachable(timeout=3.0) is None:
        pytest.skip("the hub is reachable from here: nothing to fail on")
    cfg = OmegaConf.load(REPO / "conf" / "model" / "llama3_8b.yaml")
    t0 = time.perf_counter()
    with pytest.raises(UnavailableError, match="model.init=random"):
        check_hub(cfg)
    assert time.perf_counter() - t0 < 5


def test_tiny_run_writes_results_and_offline_wandb(tmp_path):
    proc = run_cli("model=tiny_llama", "eval=smoke", "strategy=dart", "sparsity=0.5", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["status"] == "complete"
    assert set(res) >= {"config", "model", "metrics", "timing", "sparsity", "overhead", "drift"}
    assert res["model"]["num_layers"] == 4 and res["model"]["intermediate_size"] == 256
    assert res["metrics"]["smoke/news"] > 1.0
    assert res["sparsity"]["achieved"] == pytest.approx(0.5)
    assert (tmp_path / "config.yaml").is_file()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "W&B must log offline into the run folder"


def test_multirun_writes_one_folder_per_job_and_exits_1_if_any_failed(tmp_path):
    # a bad value in one job is recorded as that job's failure; the jobs after it still run; at the end the sweep
    # exits 1 with one line per failed job. Dense ignores sparsity: said once for the whole sweep, never in a title.
    proc = run_cli("-m", "strategy=static_prompt,dense", "sparsity=0.5,1.5,0.7", "model=tiny_llama", "eval=smoke",
                   "logger=none", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    found = {}
    for path in tmp_path.rglob("results.json"):
        res = json.loads(path.read_text())
        found[(res["config"]["strategy"]["name"], res["config"]["sparsity"])] = dict(res, _dir=path.parent)
    assert sorted(found) == sorted((s, x) for s in ("static_prompt", "dense") for x in (0.5, 0.7, 1.5))
    bad = {k: found.pop(k) for k in list(found) if k[1] == 1.5}
    assert all(r["status"] == "failed" and "sparsity=1.5" in r["error"] and "[0, 1)" in r["error"] for r in bad.values())
    assert all(r["status"] == "complete" for r in found.values())  # the jobs after a failure ran
    assert found[("static_prompt", 0.7)]["sparsity"]["achieved"] == pytest.approx(0.7, abs=0.01)

    summary = [line for line in proc.stderr.splitlines() if line.startswith("[dart] failed: ")]
    assert len(summary) == 2, proc.stderr[-3000:]  # one line per failed job: its folder and the error
    for r in bad.values():
        assert sum(f"[dart] failed: {r['_dir']}: ConfigError: sparsity=1.5 is outside [0, 1)" in line for line in summary) == 1
    assert "[dart] 2 of 6 jobs of this sweep failed:" in proc.stderr
    assert not list(tmp_path.glob(".dart-jobs-*"))  # the sweep's bookkeeping file is gone

    note = "strategy=dense ignores sparsity"
    assert proc.stdout.count(note) == 1, proc.stdout[-3000:]
    assert all(any(note in n for n in found[("dense", x)]["notes"]) for x in (0.5, 0.7))
    assert not any(note in n for n in found[("static_prompt", 0.5)]["notes"])
    titles = [line for line in proc.stdout.splitlines() if line.startswith("tiny_llama (tiny, random) | strategy=")]
    assert sorted(titles) == sorted(["tiny_llama (tiny, random) | strategy=dense | eval=smoke"] * 2 + [
        f"tiny_llama (tiny, random) | strategy=static_prompt | sparsity={x} | eval=smoke" for x in (0.5, 0.7)])


def test_multirun_keeps_hydras_own_errors(tmp_path):
    proc = run_cli("-m", "model=nope,tiny_llama", "eval=smoke", "logger=none", f"hydra.sweep.dir={tmp_path}", timeout=120)
    assert proc.returncode == 1
    assert "Could not find 'model/nope'" in proc.stderr and "tiny_llama" in proc.stderr
    assert "[dart] failed" not in proc.stderr and not list(tmp_path.rglob("results.json"))
