"""scripts/gpu_check.sh --smoke: the GPU check's two benches, small, on the CPU (what CI can run of it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO  # noqa: E402

SCRIPT = REPO / "scripts" / "gpu_check.sh"


def run(*args, timeout=120):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_smoke_writes_decode_and_scoring_json(tmp_path):
    proc = run("--smoke", "--out", str(tmp_path))
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    res = json.loads((tmp_path / "decode" / "bench.json").read_text())
    assert res["config"]["batch_sizes"] == [1, 2] and res["config"]["model"] == "tiny_llama"
    got = {(r["batch"], r["mode"], r["sparsity"]) for r in res["rows"]}
    assert got == {(b, m, s) for b in (1, 2) for m, s in
                   (("dense", 0.0), ("masked", 0.5), ("masked", 0.7),
                    ("compacted" if b == 1 else "union", 0.5), ("compacted" if b == 1 else "union", 0.7))} | {
                       (2, "shared", 0.5), (2, "shared", 0.7)}
    assert all(r["tokens_per_s"] > 0 and r["bound"] >= 1.0 for r in res["rows"])
    scoring = json.loads((tmp_path / "scoring" / "scoring.json").read_text())  # the scoring bench is part of it
    assert {r["strategy"] for r in scoring["rows"]} == {"dense", "dart"}
    for r in scoring["rows"]:  # two interleaved repeats: paired ratios against dense of the same repeat
        assert len(r["score_s_all"]) == len(r["ratio_all"]) == 2
        assert r["ratio_ci"][0] <= r["ratio_to_dense"] <= r["ratio_ci"][1]
    assert "[gpu_check] done in" in proc.stdout


def test_full_run_needs_cuda_and_bad_arguments_fail(tmp_path):
    import torch

    proc = run("--bogus")
    assert proc.returncode == 2 and "unknown argument --bogus" in proc.stderr
    if not torch.cuda.is_available():
        proc = run("--out", str(tmp_path))
        assert proc.returncode == 2 and "no CUDA device" in proc.stderr and "--smoke" in proc.stderr
        assert not any(tmp_path.iterdir())
