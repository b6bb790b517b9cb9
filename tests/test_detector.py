"""What the drift detector sees (eval=detector, dart.evals.detector) and its tables (dart.tables.detector), and the
across-models table (dart.tables.across): thresholds and window cosines on hand-built attention outputs, a run on
the tiny model, and tables from hand-made results."""
from __future__ import annotations

import json

import pytest
import torch

from dart.evals.detector import MARGINS, WINDOW, thresholds
from tests.conftest import run_cli

D = 8


def signal(baseline: list[torch.Tensor], after: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(baseline + after)[None]  # (1, T, D)


def e(i: int, scale: float = 1.0) -> torch.Tensor:
    v = torch.zeros(D)
    v[i] = scale
    return v


def test_thresholds_and_windows_on_hand_built_signals():
    # baseline: 10 vectors, e0 + a little e1 in alternate windows: window cosines 1 and cos(atan(0.5)) = 0.894
    base = [e(0) + (e(1, 0.5) if (t // WINDOW) % 2 else 0 * e(1)) for t in range(10)]
    after = [e(0)] * WINDOW + [e(0) + e(2, 1.5)] * WINDOW + [e(3)] * WINDOW + [e(0)] * 3  # the last 3: no full window
    mu, taus, cos = thresholds(signal(base, after), baseline=10)
    centre = torch.stack(base).mean(0)
    c1 = torch.nn.functional.cosine_similarity(torch.stack(base[:5]).mean(0), centre, dim=0)
    c2 = torch.nn.functional.cosine_similarity(torch.stack(base[5:]).mean(0), centre, dim=0)
    assert mu.item() == pytest.approx(float(c1 + c2) / 2, abs=1e-6)
    sigma = float(torch.tensor([c1, c2]).std())
    for m in MARGINS:  # tau = mu - max(0.1 sigma, margin)
        assert taus[m].item() == pytest.approx(mu.item() - max(0.1 * sigma, m), abs=1e-6)
    expected = [torch.nn.functional.cosine_similarity(v, centre, dim=0) for v in (e(0), e(0) + e(2, 1.5), e(3))]
    assert cos.shape == (1, 3) and torch.allclose(cos[0], torch.stack(expected), atol=1e-6)
    # e0: above both thresholds; e0 + 1.5 e2 (cos 0.54, mu 0.97): below both; e3 (orthogonal): below both
    for m in MARGINS:
        assert [bool(c < taus[m][0]) for c in cos[0]] == [False, True, True]


def test_detector_run_on_the_tiny_model(tmp_path):
    proc = run_cli("model=tiny_llama", "eval=detector", "eval.limit=4", "eval.prefix=20", "eval.length=20",
                   "strategy=static_prompt", "sparsity=0.5", "logger=none", f"hydra.run.dir={tmp_path}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    layers = res["eval"]["layers"]
    assert len(layers) == res["model"]["num_layers"] and res["eval"]["margins"] == list(MARGINS)
    rows = [json.loads(x) for x in (tmp_path / "detector_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["kind"] for r in rows} == {"switch", "control"}
    last = rows[0]["layers"][-1]
    assert len(last["cosines"]) == (39 - 21) // WINDOW  # 39 positions fed, baseline 20 + 1, windows of 5
    assert last["drop"] == pytest.approx(last["mu"] - min(last["cosines"]), abs=1e-4)
    fired = [r["layers"][-1][f"first_{MARGINS[0]}"] is not None for r in rows if r["kind"] == "switch"]
    assert res["metrics"][f"detector/switch/fire_{MARGINS[0]}"] == pytest.approx(sum(fired) / len(fired))
    assert layers[-1]["switch"][f"fire_{MARGINS[0]}"] == pytest.approx(sum(fired) / len(fired))

    from dart.tables.collect import collect_folders
    from dart.tables.report import make_report

    report = make_report(collect_folders([tmp_path]), tmp_path / "tables")
    seen = [t for t in report.tables if t.name == "detector"]
    assert seen and seen[0].rows[0][2] == f"last (monitored): {len(layers) - 1}"
    assert {p.name for p in report.figures} >= {"detector_cosines.png", "detector_layers.png"}
