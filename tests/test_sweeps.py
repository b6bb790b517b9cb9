"""Sweeps survive failure: atomic results.json; a re-run of a killed sweep skips the finished jobs and recomputes
the rest (simulated with hand-edited results, and with a real SIGKILL); a failing job does not stop the others;
the submitit local launcher; one W&B run per job, grouped by the sweep."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dart.results import RESULTS, config_hash, is_complete, read_results, write_json_atomic
from tests.conftest import REPO, run_cli

TINY = ("model=tiny_llama", "eval=smoke", "strategy=static_prompt")


def results_by_sparsity(sweep: Path) -> dict[float, dict]:
    out = {}
    for path in sweep.rglob(RESULTS):
        res = json.loads(path.read_text())
        out[res["config"]["sparsity"]] = dict(res, _dir=path.parent)
    return out


def skipped(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if "finished earlier with the same config; skipping" in line]


# ----------------------------------------------------------------------------- atomic writes
def test_write_json_atomic_replaces_whole_files_only(tmp_path):
    path = tmp_path / "run" / RESULTS
    write_json_atomic(path, {"schema": 1, "status": "running", "metrics": {"x": float("nan"), "y": 2.5}})
    first = path.read_text()
    assert json.loads(first)["metrics"] == {"x": None, "y": 2.5}  # NaN is written as null, never as 0 or NaN
    with pytest.raises(TypeError):
        write_json_atomic(path, {"schema": 1, "status": "complete", "metrics": {"bad": object()}})
    assert path.read_text() == first  # the failed write left the previous file whole
    assert sorted(p.name for p in path.parent.iterdir()) == [RESULTS]  # and no temporary file behind


def test_is_complete_needs_status_schema_and_hash():
    cfg = {"sparsity": 0.5}
    res = {"schema": 1, "status": "complete", "config_hash": config_hash(cfg)}
    assert is_complete(res, config_hash(cfg))
    assert not is_complete(res, config_hash({"sparsity": 0.7}))
    assert not is_complete(dict(res, status="running"), config_hash(cfg))
    assert not is_complete(dict(res, status="failed"), config_hash(cfg))
    assert not is_complete(dict(res, schema=0), config_hash(cfg))
    assert not is_complete(None)


def test_truncated_results_json_reads_as_missing(tmp_path):
    path = tmp_path / RESULTS
    path.write_text('{"schema": 1, "status": "compl')
    assert read_results(path) is None and not is_complete(read_results(path))


# ----------------------------------------------------------------------------- resume
def test_rerun_skips_finished_jobs_and_recomputes_the_rest(tmp_path):
    sweep = tmp_path / "sweep"
    args = ("-m", "sparsity=0.25,0.5,0.625,0.75", *TINY, "logger=none", f"hydra.sweep.dir={sweep}")
    first = run_cli(*args, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    before = results_by_sparsity(sweep)
    assert sorted(before) == [0.25, 0.5, 0.625, 0.75] and all(r["status"] == "complete" for r in before.values())
    real = {s: r["metrics"]["smoke/news"] for s, r in before.items()}

    def edit(s, fn):
        path = before[s]["_dir"] / RESULTS
        res = json.loads(path.read_text())
        fn(res)
        write_json_atomic(path, res)

    edit(0.25, lambda r: r["metrics"].update({"smoke/news": 12345.0}))  # finished: a sentinel shows it is not redone
    edit(0.5, lambda r: r.update(status="running", metrics={}))         # killed mid-run: status running
    (before[0.625]["_dir"] / RESULTS).unlink()                           # killed before it wrote anything
    edit(0.75, lambda r: r.update(config_hash="0" * 16))                 # finished, but with another config

    second = run_cli(*args, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    after = results_by_sparsity(sweep)
    assert all(r["status"] == "complete" for r in after.values())
    skips = skipped(second.stdout)
    assert len(skips) == 1 and "sparsity=0.25" in skips[0]
    assert after[0.25]["metrics"]["smoke/news"] == 12345.0
    for s in (0.5, 0.625, 0.75):  # recomputed, to the same numbers (deterministic on CPU)
        assert after[s]["metrics"]["smoke/news"] == pytest.approx(real[s], rel=1e-6)
        assert after[s]["config_hash"] == before[s]["config_hash"]

    # the tables read the resumed sweep: four rows, the sentinel included
    from dart.tables.collect import collect_folders
    from dart.tables.report import make_report

    md = make_report(collect_folders([sweep]), tmp_path / "tables", figures=False).markdown
    assert "| tiny_llama (tiny, random) | Static (prompt) 25% | 25.0 | 25.0 | 25.0 | 1.234e+04 |" in md  # the sentinel
    assert md.count("| tiny_llama (tiny, random) | Static (prompt)") == 4


def test_killed_sweep_resumes_without_redoing_finished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "dart.run", "-m", "sparsity=0.25,0.5,0.625,0.75", *TINY, "logger=none",
            f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    done_at_kill: list[float] = []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done_at_kill = [s for s, r in results_by_sparsity(sweep).items() if r["status"] == "complete"]
            if done_at_kill:
                os.killpg(proc.pid, signal.SIGKILL)  # as a node failure or `kill -9` would
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    state = {s: r["status"] for s, r in results_by_sparsity(sweep).items()}
    finished = sorted(s for s, st in state.items() if st == "complete")
    assert 1 <= len(finished) < 4, state

    rerun = run_cli(*args[3:], timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    skips = skipped(rerun.stdout)
    assert len(skips) == len(finished)
    assert all(any(f"sparsity={s}" in line for line in skips) for s in finished)
    after = results_by_sparsity(sweep)
    assert sorted(after) == [0.25, 0.5, 0.625, 0.75] and all(r["status"] == "complete" for r in after.values())


# ----------------------------------------------------------------------------- failure does not stop a sweep
def test_a_failing_job_does_not_stop_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "model=tiny_llama,llama3_8b,tiny_gpt2", "eval=smoke", "strategy=dart", "logger=wandb",
                   f"hydra.sweep.dir={sweep}", "sweep_name=failing_sweep", env={"HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]  # after every job ran, with one line per failed job
    assert [line for line in proc.stderr.splitlines() if line.startswith("[dart] failed: ")][0].count("llama3_8b")
    res = {json.loads(p.read_text())["config"]["model"]["name"]: json.loads(p.read_text()) for p in sweep.rglob(RESULTS)}
    assert res["llama3_8b"]["status"] == "failed"
    assert "meta-llama/Llama-3.1-8B" in res["llama3_8b"]["error"]
    assert res["tiny_llama"]["status"] == res["tiny_gpt2"]["status"] == "complete"  # the job after the failure ran
    assert "job failed, the sweep goes on" in proc.stdout
    # one offline W&B run per finished job, each in its own job folder, grouped by the sweep
    for model in ("tiny_llama", "tiny_gpt2"):
        job_dir = next(p.parent for p in sweep.rglob(RESULTS) if json.loads(p.read_text())["config"]["model"]["name"] == model)
        runs = list((job_dir / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1, model
        assert b"failing_sweep" in runs[0].read_bytes()  # the group (= sweep_name)

    from dart.tables.collect import collect_folders
    from dart.tables.report import make_report

    md = make_report(collect_folders([sweep]), tmp_path / "tables", figures=False).markdown
    assert "| Llama-3.1-8B | DART 50% | 50.0 | – | – | – |" in md  # the failed job: its target, nothing measured
    assert "failed: llama3_8b / DART 50% / eval=smoke" in md


# ----------------------------------------------------------------------------- launchers
def test_submitit_local_launcher_runs_a_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "hydra/launcher=submitit_local", "sparsity=0.5,0.75", *TINY, "logger=none",
                   f"hydra.sweep.dir={sweep}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = results_by_sparsity(sweep)
    assert sorted(res) == [0.5, 0.75] and all(r["status"] == "complete" for r in res.values())
    assert res[0.75]["sparsity"]["achieved"] == pytest.approx(0.75, abs=0.01)
    logs = list((sweep / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2  # each job ran in its own submitit process


# ----------------------------------------------------------------------------- W&B naming and grouping
def test_wandb_logger_groups_by_sweep_and_closes_a_leftover_run(tmp_path, monkeypatch):
    import copy

    import wandb
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict

    from dart.pipeline import make_logger

    monkeypatch.setenv("WANDB_MODE", "offline")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+experiment=ten_offline", "+variant=dart_70"], return_hydra_config=True)
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])

    def as_hydra_job(mode, override_dirname):
        c = copy.deepcopy(cfg)
        OmegaConf.set_readonly(c.hydra, False)
        with open_dict(c):
            c.hydra.mode, c.hydra.job.override_dirname, c.hydra.runtime.output_dir = mode, override_dirname, str(tmp_path)
        HydraConfig.instance().set_config(c)

    try:
        as_hydra_job(RunMode.RUN, "")
        single = make_logger(job, tmp_path, {})
        assert single._wandb_init["group"] is None  # a single run belongs to no sweep
        assert single._wandb_init["name"] == "smollm2_135m-dart-0.7-ten"
        assert set(single._wandb_init["tags"]) == {"strategy=dart", "model=smollm2_135m", "eval=ten", "sparsity=0.7"}

        as_hydra_job(RunMode.MULTIRUN, "+variant=dart_70,model=smollm2_135m")
        leftover = wandb.init(mode="offline", dir=str(tmp_path), project="dart")  # as a job that failed mid-run leaves it
        multi = make_logger(job, tmp_path, {})
        assert wandb.run is None and leftover._is_finished
        assert multi._wandb_init["group"] == "ten_offline"
        assert multi._wandb_init["name"] == "+variant=dart_70,model=smollm2_135m"
        job.logger.group = "mine"
        assert make_logger(job, tmp_path, {})._wandb_init["group"] == "mine"
    finally:
        HydraConfig.instance().cfg = None  # leave no Hydra state to other tests


def test_a_path_valued_override_keeps_job_folders_one_level_deep(tmp_path):
    """`eval.pairs=/abs/path/pairs.jsonl` in a multirun: each job's folder is a direct child of the sweep folder (the
    path's slashes become %2F), and the tables find every planned job there."""
    pairs = tmp_path / "data" / "pairs.jsonl"
    pairs.parent.mkdir()
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 20)
    pairs.write_text("\n".join(json.dumps({"a": text, "b": text, "kind": "mine"}) for _ in range(2)) + "\n")
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "model=tiny_llama", "eval=switch", f"eval.pairs={pairs}", "eval.prefix=8", "eval.length=6",
                   "strategy=static_prompt", "sparsity=0.25,0.5", "logger=none", f"hydra.sweep.dir={sweep}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.rglob(RESULTS))
    assert len(jobs) == 2 and all(j.parent == sweep for j in jobs), jobs
    assert all(f"eval.pairs={str(pairs).replace('/', '%2F')}" in j.name for j in jobs)
    from dart.tables.collect import collect_folders

    collection = collect_folders([sweep])
    assert len(collection.records) == 2 and all(r.complete for r in collection.records)
    assert not [n for n in collection.notes if "never started" in n or "planned" in n], collection.notes


def test_export_sweep_never_replaces_complete_results_with_fewer(tmp_path):
    """scripts/export_sweep.sh copies a multirun folder's results into benchmarks/sweeps/, but refuses to replace a
    committed sweep whose complete jobs the source does not all hold complete (EXPORT_FORCE=1 overrides)."""
    import shutil

    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "export_sweep.sh", tmp_path / "scripts")

    def job(folder, name, status):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "results.json").write_text(json.dumps({"status": status}))

    def export(env=None):
        return subprocess.run(["bash", "scripts/export_sweep.sh", "multirun/s"], cwd=tmp_path, capture_output=True,
                              text=True, env={**os.environ, **(env or {})})

    src, dst = tmp_path / "multirun" / "s", tmp_path / "benchmarks" / "sweeps" / "s"
    job(src, "a", "complete")
    job(src, "b", "complete")
    assert export().returncode == 0 and sorted(p.name for p in dst.iterdir()) == ["a", "b"]
    shutil.rmtree(src)
    job(src, "a", "complete")
    job(src, "b", "failed")  # a re-run that failed must not overwrite the finished job
    r = export()
    assert r.returncode == 1 and "1 job(s) fewer complete" in r.stderr
    assert json.loads((dst / "b" / "results.json").read_text())["status"] == "complete"
    job(src, "c", "complete")
    assert export({"EXPORT_FORCE": "1"}).returncode == 0
    assert json.loads((dst / "b" / "results.json").read_text())["status"] == "failed"
