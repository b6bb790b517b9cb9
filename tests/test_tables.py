"""python -m dart.tables on fixture results.json files: the real experiment configs (composed with Hydra, as a
sweep writes them) with chosen numbers, failed and killed jobs among them; published numbers beside ours;
missing cells as "–" (never 0); Markdown, LaTeX, figures; the W&B source; clear errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from dart.errors import ConfigError, UnavailableError
from dart.results import SCHEMA, config_hash, write_json_atomic
from dart.tables.collect import collect_folders
from dart.tables.render import MISSING
from dart.tables.report import make_report

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
OFFLINE = ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa", "mmlu", "gpqa", "medmcqa"]


def job_config(*overrides: str) -> dict:
    """The config a job of a sweep stores in results.json (dart.pipeline.result_config of the composed config)."""
    from dart.pipeline import result_config

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    OmegaConf.set_struct(cfg, False)
    cfg.sweep_name = "fixture"  # the ${now:...} default needs a running Hydra app
    return result_config(cfg)


def write_job(root: Path, name: str, config: dict, metrics: dict | None = None, status: str = "complete",
              error: str | None = None, **sections) -> Path:
    d = root / name
    res = {"schema": SCHEMA, "status": status, "error": error, "config": config, "config_hash": config_hash(config)}
    if status == "complete":
        res.update(metrics=metrics or {}, notes=[], **sections)
    write_json_atomic(d / "results.json", res)
    return d


def ten_metrics(values: dict[str, float]) -> tuple[dict, dict]:
    """metrics and eval.sources of an offline ten run with acc = values[bench]."""
    metrics, sources = {}, {}
    for b, v in values.items():
        metrics[f"ten/offline_{b}/acc"] = v
        metrics[f"ten/offline_{b}/n"] = 2.0
        sources[b] = {"kind": "offline", "tasks": [f"offline_{b}"]}
    return metrics, {"sources": sources}


def point(cells: list[str]) -> list[str]:
    """The values of cells without their "± ..." interval."""
    return [c.split(" ± ")[0] for c in cells]


def md_row(md: str, *first_cells: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[: len(first_cells)] == list(first_cells):
            return cells
    raise AssertionError(f"no row starting {first_cells} in:\n{md}")


@pytest.fixture(scope="module")
def ten_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("ten_offline")
    exp = ("+experiment=ten_offline", "model=smollm2_135m", "eval.limit=1")
    base = {b: 0.5 for b in OFFLINE}
    rows = {
        "dense": dict(base, boolq=1.0),
        "static_prompt_50": dict(base, rte=0.0),            # a real 0 stays 0.0, it is not missing
        "griffin_50": dict(base),
        "dart_50": dict(base, mmlu=0.75),
        "griffin_70": dict(base, arc_easy=0.25),
        "dart_70": dict(base, arc_easy=0.75, hellaswag=0.6),  # best gain over GRIFFIN 70%: arc_easy, +50 points
    }
    for variant, vals in rows.items():
        metrics, ev = ten_metrics(vals)
        write_job(root, f"+variant={variant},model=smollm2_135m", job_config(*exp, f"+variant={variant}"), metrics, eval=ev)
    # static_prompt_70: the job failed; its results.json says so
    write_job(root, "+variant=static_prompt_70,model=smollm2_135m", job_config(*exp, "+variant=static_prompt_70"),
              status="failed", error="RuntimeError: boom in the middle of mmlu\nsecond line")
    return root


def test_ten_table_values_missing_cells_and_notes(ten_sweep, tmp_path):
    report = make_report(collect_folders([ten_sweep]), tmp_path / "out")
    md = report.markdown
    assert "Ten benchmarks: acc (%), offline stand-ins (NOT the benchmarks)" in md
    header = md_row(md, "Model", "Method")
    # every task scored n = 2 documents in every row: n in the header; the average over 10 benchmarks: n = 20
    assert header == ["Model", "Method", "target %", "effective %", *[f"{b} (n=2)" for b in OFFLINE], "Avg (n=20)"]
    # ± 1.96 se, se = sqrt(p (1 - p) / (n - 1)) of 0/1 items: p = 1 -> 0; p = 0.5, n = 2 -> 0.5 -> ± 98.0 points;
    # Avg: sqrt(9 * 0.5^2) / 10 = 0.15 -> ± 29.4. Dense: target 0, effective 0 by definition
    assert md_row(md, "SmolLM2-135M", "Dense") == (["SmolLM2-135M", "Dense", "0.0", "0.0", "100.0 ± 0.0"]
                                                   + ["50.0 ± 98.0"] * 9 + ["55.0 ± 29.4"])
    assert md_row(md, "SmolLM2-135M", "Static (prompt) 50%")[5] == "0.0 ± 0.0"  # rte: a real zero
    dart70 = md_row(md, "SmolLM2-135M", "DART 70%")
    assert dart70[2:4] == ["70.0", MISSING]  # no sparsity.effective in these results.json: "–"
    assert point(dart70[4:]) == ["50.0", "50.0", "60.0", "50.0", "75.0"] + ["50.0"] * 5 + ["53.5"]
    failed = md_row(md, "SmolLM2-135M", "Static (prompt) 70%")
    assert failed[2:] == ["70.0"] + [MISSING] * 12  # the target from its config; every other cell missing, none 0
    assert "effective % –: results.json without sparsity.effective" in md
    assert "failed: smollm2_135m / Static (prompt) 70% / eval=ten" in md and "RuntimeError: boom in the middle of mmlu" in md
    assert "second line" not in md
    # rows in the paper's order: dense, static, GRIFFIN, DART; 50% before 70%
    first_table = md.split("### DART minus GRIFFIN")[0]
    methods = [line.split("|")[2].strip() for line in first_table.splitlines() if line.startswith("| SmolLM2-135M")]
    assert methods == ["Dense", "Static (prompt) 50%", "Static (prompt) 70%", "GRIFFIN 50%", "GRIFFIN 70%", "DART 50%", "DART 70%"]
    assert "eval.limit=1 documents per task" in md


def test_gain_over_griffin_beside_the_paper(ten_sweep, tmp_path):
    md = make_report(collect_folders([ten_sweep]), tmp_path / "out").markdown
    assert md_row(md, "SmolLM2-135M", "50%") == ["SmolLM2-135M", "50%", MISSING, MISSING, "+25.0", "mmlu", MISSING]
    assert md_row(md, "SmolLM2-135M", "70%") == ["SmolLM2-135M", "70%", MISSING, MISSING, "+50.0", "arc_easy", MISSING]


def test_paper_gain_shows_for_llama3_8b_at_70(tmp_path):
    exp = ("+experiment=ten", "model=llama3_8b")
    real = {f"ten/{b}/acc": 0.5 for b in ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
                                          "openbookqa", "mmlu", "medmcqa", "gpqa_main_n_shot", "gpqa_diamond_n_shot",
                                          "gpqa_extended_n_shot"]}
    write_job(tmp_path, "g70", job_config(*exp, "+variant=griffin_70"), real)  # no eval.sources: read from the keys
    write_job(tmp_path, "d70", job_config(*exp, "+variant=dart_70"), dict(real, **{"ten/boolq/acc": 0.6}))
    report = make_report(collect_folders([tmp_path]), tmp_path / "out", figures=False)
    md = report.markdown
    assert md_row(md, "Llama-3.1-8B", "70%") == ["Llama-3.1-8B", "70%", MISSING, MISSING, "+10.0", "boolq", "+14.5"]
    assert "offline stand-ins" not in md
    # no n in these metrics: no interval (gpqa averages three tasks, the others would need n)
    assert md_row(md, "Llama-3.1-8B", "DART 70%")[-1] == "51.0"


def test_acc_norm_table_leaves_benchmarks_without_it_missing(tmp_path):
    metrics = {"ten/offline_boolq/acc": 0.5, "ten/offline_hellaswag/acc": 0.25, "ten/offline_hellaswag/acc_norm": 0.75}
    ev = {"sources": {b: {"kind": "offline", "tasks": [f"offline_{b}"]} for b in ("boolq", "hellaswag")}}
    write_job(tmp_path, "d", job_config("+experiment=ten_offline", "+variant=dart_50"), metrics, eval=ev)
    md = make_report(collect_folders([tmp_path]), tmp_path / "out", metric="acc_norm", figures=False).markdown
    assert "Ten benchmarks: acc_norm (%)" in md
    assert md_row(md, "SmolLM2-135M", "DART 50%")[4:] == [MISSING, "75.0", MISSING]
    assert "acc_norm exists only for" in md


def test_killed_job_and_never_started_jobs_are_reported(ten_sweep, tmp_path):
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(ten_sweep, sweep)
    # a job killed before writing results.json: Hydra's .hydra/config.yaml is all there is
    killed = sweep / "+variant=dart_70,model=smollm2_135m"
    (killed / "results.json").unlink()
    (killed / ".hydra").mkdir()
    (killed / ".hydra" / "config.yaml").write_text(yaml.safe_dump(dict(job_config("+experiment=ten_offline", "+variant=dart_70", "eval.limit=1"),
                                                                       sweep_name="${now:%H}", hydra={"x": 1})))
    # multirun.yaml of the sweep: two models planned, only smollm2 ever started
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+experiment=ten_offline"], return_hydra_config=True)
    hydra = OmegaConf.to_container(cfg.hydra, resolve=False)
    hydra["sweeper"]["params"]["model"] = "smollm2_135m,tiny_llama"
    hydra["overrides"]["task"] = ["+experiment=ten_offline"]
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra}))
    md = make_report(collect_folders([sweep]), tmp_path / "out", figures=False).markdown
    assert md_row(md, "SmolLM2-135M", "DART 70%")[2:] == ["70.0"] + [MISSING] * 12
    assert "no results.json (the job started but was killed before it finished, or is still running): smollm2_135m / DART 70%" in md
    assert "7 of the 14 jobs its last launch planned never started" in md
    assert "+variant=dart_70,model=tiny_llama" in md
    # the gain table lost its 70% row (DART 70% has no numbers) and keeps 50%
    assert md_row(md, "SmolLM2-135M", "50%")[4] == "+25.0"
    assert "| SmolLM2-135M | 70% |" not in md


def test_summarization_table_puts_the_paper_beside_ours(tmp_path):
    exp = ("+experiment=summarization",)
    ours = {"dense": {"cnn_dailymail": 0.15, "multi_news": 0.12, "gov_report": 0.17, "xsum": 0.11},
            "static_prompt_50": {"cnn_dailymail": 0.05, "multi_news": 0.06, "gov_report": 0.12, "xsum": None},
            "dart_50": {"cnn_dailymail": 0.125, "multi_news": 0.1, "gov_report": 0.15, "xsum": 0.09}}
    for variant, vals in ours.items():
        metrics = {f"summarization/{d}/rougeL": v for d, v in vals.items()}
        metrics.update({f"summarization/{d}/rouge1": 0.3 for d in vals})
        write_job(tmp_path, variant, job_config(*exp, f"+variant={variant}"), metrics)
    report = make_report(collect_folders([tmp_path]), tmp_path / "out")
    md = report.markdown
    assert md_row(md, "Model", "Data set") == ["Model", "Data set", "Dense", "Static (prompt) 50%", "DART 50%",
                                               "Paper: Dense", "Paper: Static mask 50%", "Paper: DART 50%"]
    assert md_row(md, "Llama-3.2-3B-Instruct", "cnn_dailymail")[2:] == ["0.150", "0.050", "0.125", "0.140", "0.046", "0.122"]
    assert md_row(md, "Llama-3.2-3B-Instruct", "gov_report")[2:] == ["0.170", "0.120", "0.150", "0.172", "0.123", "0.155"]
    assert md_row(md, "Llama-3.2-3B-Instruct", "xsum")[2:] == ["0.110", MISSING, "0.090", MISSING, MISSING, MISSING]
    # each method's target and effective sparsity under its column (none of these results has sparsity.effective)
    assert md_row(md, "Llama-3.2-3B-Instruct", "sparsity: target %")[2:5] == ["0.0", "50.0", "50.0"]
    assert md_row(md, "Llama-3.2-3B-Instruct", "sparsity: effective %")[2:5] == ["0.0", MISSING, MISSING]
    assert (tmp_path / "out" / "rougeL_bars.png").stat().st_size > 10_000


def test_offline_summarization_has_no_paper_columns(tmp_path):
    exp = ("+experiment=summarization_offline",)
    for variant, v in (("dense", 0.2), ("dart_50", 0.18)):
        write_job(tmp_path, variant, job_config(*exp, f"+variant={variant}"),
                  {"summarization/wiki/rougeL": v, "summarization/wiki/rougeL_lo": v - 0.02, "summarization/wiki/rougeL_hi": v + 0.03})
    md = make_report(collect_folders([tmp_path]), tmp_path / "out", figures=False).markdown
    assert md_row(md, "Model", "Data set") == ["Model", "Data set", "Dense", "DART 50%"]
    assert md_row(md, "SmolLM2-135M", "wiki")[2:] == ["0.200", "0.180"]
    assert "offline stand-in" in md
    # and one row per run with every metric and its interval
    assert md_row(md, "Model", "Method") == ["Model", "Method", "target %", "effective %", "wiki/rougeL"]
    assert md_row(md, "SmolLM2-135M", "DART 50%") == ["SmolLM2-135M", "DART 50%", "50.0", MISSING, "0.18 [0.16, 0.21]"]


def test_ablation_rows_are_labelled_by_the_knobs_that_vary(tmp_path):
    for i, ranking in enumerate(["product", "magnitude", "max"]):
        write_job(tmp_path, f"r{i}", job_config("+experiment=ablation_ranking_offline", f"ranking={ranking}"),
                  {"ten/offline_boolq/acc": 0.1 * (i + 1)})
    for variant in ("dart_l2", "dart_ema"):
        write_job(tmp_path / "stat", variant, job_config("+experiment=ablation_statistic_offline", f"+variant={variant}"),
                  {"ten/offline_boolq/acc": 0.5})
    md = make_report(collect_folders([tmp_path]), tmp_path / "out", figures=False).markdown
    # one table (one eval): both ablations; their knobs are ranking, statistic, ema_decay, each named only where it
    # differs from the strategy's default (statistic l2, no decay): dart_l2 is then the same run as ranking=magnitude
    for lab in ("DART 70% (ranking=magnitude)", "DART 70% (ranking=max)",
                "DART 70% (ranking=magnitude, ema_decay=0.9, statistic=ema)"):
        assert f"| {lab} |" in md, md
    assert "two complete runs of smollm2_135m / DART 70% (ranking=magnitude)" in md  # the same setting twice: noted
    only = tmp_path / "only_ranking"
    for i, ranking in enumerate(["max", "magnitude"]):
        write_job(only, f"r{i}", job_config("+experiment=ablation_ranking_offline", f"ranking={ranking}"),
                  {"ten/offline_boolq/acc": 0.25 * (i + 1)})
    report = make_report(collect_folders([only]), tmp_path / "out2")
    assert report.figures == []  # one sparsity: no accuracy-vs-sparsity curve to draw
    md = report.markdown
    assert point(md_row(md, "SmolLM2-135M", "DART 70% (ranking=magnitude)"))[4] == "50.0"
    assert point(md_row(md, "SmolLM2-135M", "DART 70% (ranking=max)"))[4] == "25.0"


def test_drift_metrics_and_cosine_traces(tmp_path):
    cfg = job_config("+experiment=drift_offline", "+variant=dart_50")
    windows = [{"request": 1, "row": 0, "step": s, "cosine": c, "threshold": 0.8}
               for s, c in ((25, 0.95), (30, 0.9), (35, 0.7), (60, 0.93), (65, 0.91))]
    windows += [{"request": 3, "row": 0, "step": 25, "cosine": 0.97, "threshold": 0.85}]
    drift = {"enabled": True, "windows": windows, "triggers": [windows[2]]}
    write_job(tmp_path, "dart", cfg, {"drift/rougeL_vs_dense": 0.42, "drift/triggers_per_sample": 0.5},
              drift=drift, sparsity={"target": 0.5, "achieved": 0.5})
    write_job(tmp_path, "static", job_config("+experiment=drift_offline", "+variant=static_prompt_50"),
              {"drift/rougeL_vs_dense": 0.31, "drift/triggers_per_sample": 0.0}, drift={"windows": [], "triggers": []})
    report = make_report(collect_folders([tmp_path]), tmp_path / "out")
    md = report.markdown
    assert md_row(md, "Model", "Method") == ["Model", "Method", "target %", "effective %", "achieved %",
                                             "rougeL_vs_dense", "triggers_per_sample"]
    assert md_row(md, "SmolLM2-135M", "DART 50%")[2:] == ["50.0", MISSING, "50.0", "0.42", "0.5"]
    assert md_row(md, "SmolLM2-135M", "Static (prompt) 50%")[2:] == ["50.0", MISSING, MISSING, "0.31", "0"]
    figs = [f.name for f in report.figures]
    assert figs == ["drift_cosine_smollm2_135m_DART_50.png"]  # static_prompt has no detector: no trace
    assert (tmp_path / "out" / figs[0]).stat().st_size > 10_000


def test_latex_escapes_and_marks_missing(ten_sweep, tmp_path):
    make_report(collect_folders([ten_sweep]), tmp_path / "out", figures=False)
    tex = (tmp_path / "out" / "tables.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\toprule" in tex
    assert r"Static (prompt) 70\% & 70.0 & -- & --" in tex
    assert r"arc\_easy" in tex and "arc_easy" not in tex.replace(r"arc\_easy", "")


def test_accuracy_vs_sparsity_figure(ten_sweep, tmp_path):
    report = make_report(collect_folders([ten_sweep]), tmp_path / "out")
    assert [f.name for f in report.figures] == ["accuracy_vs_sparsity.png"]
    assert report.figures[0].stat().st_size > 10_000
    assert "![accuracy_vs_sparsity](accuracy_vs_sparsity.png)" in report.markdown


def test_cli_writes_into_the_sweep_folder(ten_sweep):
    proc = subprocess.run([sys.executable, "-m", "dart.tables", str(ten_sweep), "--no-plots"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| SmolLM2-135M | Dense | 0.0 | 0.0 | 100.0 ± 0.0 |" in proc.stdout
    assert (ten_sweep / "tables" / "tables.md").read_text() in proc.stdout
    assert (ten_sweep / "tables" / "tables.tex").is_file()


@pytest.mark.parametrize("args, message", [
    (["{empty}"], "no results.json (and no job folders) below it"),
    (["{empty}/nope"], "no such folder"),
    (["{empty}", "{empty}"], "say where the tables go with --out"),
    ([], "no folder given"),
])
def test_cli_errors(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "dart.tables", *[a.format(empty=tmp_path / "empty") for a in args]],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_folder_of_runs_without_results_is_an_error(tmp_path):
    (tmp_path / "a" / "wandb").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no results.json"):
        collect_folders([tmp_path])


class FakeRun:
    def __init__(self, config, summary, state, path):
        self.config, self.summary, self.state, self.path = config, summary, state, path


def test_wandb_runs_become_records(tmp_path):
    from dart.tables.collect import Collection
    from dart.tables.wandb_runs import record_from_run

    cfg = job_config("+experiment=ten_offline", "+variant=dart_50")
    summary = {"ten/offline_boolq/acc": 0.75, "ten/offline_rte/acc": 0.5, "sparsity/achieved": 0.5,
               "overhead/state_bytes": 100, "_runtime": 3.0}
    done = record_from_run(FakeRun(dict(cfg, _wandb={"x": 1}), summary, "finished", ["team", "dart", "abc"]))
    assert done.complete and done.source == "wandb:team/dart/abc"
    assert done.metrics == {"ten/offline_boolq/acc": 0.75, "ten/offline_rte/acc": 0.5}
    assert done.results["sparsity"] == {"achieved": 0.5}
    crashed = record_from_run(FakeRun(job_config("+experiment=ten_offline", "+variant=dart_70"), {}, "crashed", ["team", "dart", "def"]))
    assert crashed.status == "failed" and crashed.metrics == {}
    md = make_report(Collection([done, crashed], [], []), tmp_path, figures=False).markdown
    assert md_row(md, "SmolLM2-135M", "DART 50%")[2:6] == ["50.0", MISSING, "75.0", "50.0"]
    assert md_row(md, "SmolLM2-135M", "DART 70%")[2:] == ["70.0"] + [MISSING] * 4
    assert "failed: smollm2_135m / DART 70% / eval=ten (wandb:team/dart/def): W&B state crashed" in md


def test_wandb_without_a_key_says_where_the_local_results_are(tmp_path, monkeypatch):
    from dart.tables.wandb_runs import collect_wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UnavailableError, match=r"needs an API key .*python -m dart.tables multirun/<sweep_name>"):
        collect_wandb("team/dart")


def test_unreadable_and_foreign_results_are_noted(tmp_path):
    write_job(tmp_path, "ok", job_config("+experiment=ten_offline", "+variant=dense"), {"ten/offline_boolq/acc": 0.5})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text('{"schema": 1, "status": "comp')
    md = make_report(collect_folders([tmp_path]), tmp_path / "out", figures=False).markdown
    assert "unreadable results.json" in md and "JSONDecodeError" in md
    assert md_row(md, "SmolLM2-135M", "Dense")[4] == "50.0"


# ============================================================================ fair comparisons (docs/method.md 9)
def switch_metrics(kl: float, top1: float, lo: float, hi: float) -> dict:
    """eval=switch metrics: switch/control/all with bootstrap bounds (the control numbers are not under test)."""
    m = {}
    for kind, scale in (("switch", 1.0), ("control", 0.5), ("all", 0.75)):
        m.update({f"switch/{kind}/kl": kl * scale, f"switch/{kind}/kl_lo": lo * scale, f"switch/{kind}/kl_hi": hi * scale,
                  f"switch/{kind}/top1": top1, f"switch/{kind}/n": 60.0})
    return m


@pytest.fixture(scope="module")
def switch_sweep(tmp_path_factory):
    """DART re-traces (effective below target); GRIFFIN does not. Effective sparsities and KLs chosen so the
    matched table's interpolations are easy to check by hand."""
    root = tmp_path_factory.mktemp("switch")
    runs = {  # variant: (effective sparsity, switch KL, top-1)
        "dense": (0.0, 0.0, 1.0),
        "dart_50": (0.40, 0.10, 0.80), "dart_70": (0.60, 0.30, 0.60),
        "griffin_50": (0.485, 0.25, 0.70), "griffin_70": (0.70, 0.50, 0.50),
    }
    for variant, (eff, kl, top1) in runs.items():
        cfg = job_config("eval=switch", "model=smollm2_135m", f"+variant={variant}")
        target = 0.0 if variant == "dense" else cfg["sparsity"]
        write_job(root, variant, cfg, switch_metrics(kl, top1, kl * 0.8, kl * 1.25),
                  sparsity={"target": target, "achieved": target, "effective": eff, "effective_prefill": target},
                  eval={"bootstrap": {"method": "percentile", "resamples": 2000, "seed": 0, "unit": "sample"}})
    return root


def test_effective_sparsity_columns_and_marks(switch_sweep, tmp_path):
    report = make_report(collect_folders([switch_sweep]), tmp_path / "out")
    md = report.markdown
    assert md_row(md, "Model", "Method") == ["Model", "Method", "target %", "effective %", "achieved %", "subset",
                                             "kl", "top1", "n"]
    # DART 50%: 10 points below its target -> marked; GRIFFIN 50%: 1.5 points below -> within tolerance, unmarked
    assert md_row(md, "SmolLM2-135M", "DART 50%", "50.0")[3:5] == ["40.0‡", "50.0"]
    assert md_row(md, "SmolLM2-135M", "GRIFFIN 50%", "50.0")[3] == "48.5"
    assert md_row(md, "SmolLM2-135M", "GRIFFIN 70%", "70.0")[3] == "70.0"
    assert md_row(md, "SmolLM2-135M", "Dense", "0.0")[3] == "0.0"
    assert "‡ effective sparsity more than 2 points below its target: dense re-trace tokens" in md
    # one row per subset, each metric with its bootstrap interval folded into the cell
    rows = [line for line in md.splitlines() if line.startswith("| SmolLM2-135M | DART 70% |")]
    assert [r.split("|")[6].strip() for r in rows] == ["switch", "control", "all"]
    assert md_row(md, "SmolLM2-135M", "DART 70%", "70.0", "60.0‡", "70.0", "switch")[6:] == ["0.3 [0.24, 0.375]", "0.6", "60"]
    assert "[lo, hi]: 95% interval, percentile bootstrap over samples (2000 resamples, seed 0)" in md
    tex = (tmp_path / "out" / "tables.tex").read_text()
    assert r"40.0$^\ddagger$" in tex


def test_matched_effective_sparsity_table_interpolates(switch_sweep, tmp_path):
    md = make_report(collect_folders([switch_sweep]), tmp_path / "out", figures=False).markdown
    section = md.split("### Matched effective sparsity: eval=switch")[1]
    assert md_row(section, "Model", "quality") == ["Model", "quality", "effective %", "run of", "DART", "GRIFFIN", "Dense"]
    kl = "KL(dense ‖ pruned) on B, switch pairs"
    kl_rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
               if line.startswith(f"| SmolLM2-135M | {kl}")]
    # DART: (40%, 0.10), (60%, 0.30); GRIFFIN: (48.5%, 0.25), (70%, 0.50); never extrapolated; an own point carries its
    # run's interval (here 0.8 and 1.25 times the value), an interpolated one none
    assert [r[2:] for r in kl_rows] == [
        ["40.0", "DART", "0.1 [0.08, 0.125]", "no data in range", "0"],
        ["48.5", "GRIFFIN", "0.185 (interp.)", "0.25 [0.2, 0.3125]", "0"],         # 0.10 + 0.20 * 8.5 / 20
        ["60.0", "DART", "0.3 [0.24, 0.375]", "0.3837 (interp.)", "0"],            # 0.25 + 0.25 * 11.5 / 21.5
        ["70.0", "GRIFFIN", "no data in range", "0.5 [0.4, 0.625]", "0"],
    ]
    top1 = md_row(section, "SmolLM2-135M", "top-1 agreement on B, switch pairs", "48.5")
    assert top1[3:] == ["GRIFFIN", "0.715 (interp.)", "0.700", "1.000"]  # 0.8 - 0.2 * 8.5 / 20


def test_matched_table_leaves_out_runs_without_effective_sparsity(tmp_path):
    for variant, kl, target, eff in (("dart_50", 0.1, 0.5, 0.45), ("dart_70", 0.3, 0.7, 0.62), ("griffin_70", 0.4, 0.7, None)):
        write_job(tmp_path, variant, job_config("eval=switch", f"+variant={variant}"), switch_metrics(kl, 0.5, kl, kl),
                  sparsity={"target": target, "achieved": target, **({"effective": eff} if eff is not None else {})})
    md = make_report(collect_folders([tmp_path]), tmp_path / "out", figures=False).markdown
    assert "left out (results.json without sparsity.effective): SmolLM2-135M / GRIFFIN 70%" in md
    assert md_row(md, "SmolLM2-135M", "GRIFFIN 70%", "70.0")[3] == MISSING
    section = md.split("### Matched effective sparsity")[1]
    assert md_row(section, "Model", "quality")[4:] == ["DART", "Dense"]  # no GRIFFIN column: it has no point


def test_pareto_plot_is_written(switch_sweep, tmp_path):
    report = make_report(collect_folders([switch_sweep]), tmp_path / "out")
    assert [f.name for f in report.figures] == ["pareto_switch.png"]
    assert report.figures[0].stat().st_size > 20_000
    assert "![pareto_switch](pareto_switch.png)" in report.markdown


def test_interpolate_by_hand():
    from dart.tables.pareto import interpolate

    pts = [(0.6, 0.3), (0.4, 0.1)]
    assert interpolate(pts, 0.4) == (0.1, "point")
    assert interpolate(pts, 0.5)[0] == pytest.approx(0.2) and interpolate(pts, 0.5)[1] == "interpolated"
    assert interpolate(pts, 0.7) == (None, "out of range") and interpolate(pts, 0.3) == (None, "out of range")
    assert interpolate([(0.5, 1.0)], 0.5) == (1.0, "point") and interpolate([(0.5, 1.0)], 0.6)[0] is None


# ----------------------------------------------------------------------------- the decomposition sweep
# 2 benchmarks: boolq (one-token answers) and arc_easy (multi-token), 4 documents each, per-document 0/1 stored
DECOMP = {  # (strategy, allocation, protocol): (boolq bits, arc_easy bits)
    ("static_prompt", "uniform", "causal"): ("1100", "1000"),
    ("static_prompt", "uniform", "compat"): ("1110", "1100"),
    ("static_prompt", "auto", "causal"): ("1100", "1100"),
    ("static_prompt", "auto", "compat"): ("1110", "1110"),
    ("griffin", "uniform", "causal"): ("1000", "1000"),
    ("griffin", "uniform", "compat"): ("1000", "1100"),
    ("griffin", "auto", "causal"): ("1100", "1000"),
    ("griffin", "auto", "compat"): ("1100", "1100"),
    ("dart", "uniform", "causal"): ("1100", "1110"),   # re-tracing helps on arc_easy; boolq == static by construction
    ("dart", "uniform", "compat"): ("1110", "1100"),   # == static under compat: one merged row
    ("dart", "auto", "causal"): ("1100", "1100"),      # could differ on arc_easy, but happens to be identical
    ("dart", "auto", "compat"): ("1110", "1111"),      # differs although it cannot: flagged
}


def decomposition_job(root: Path, strategy: str, allocation: str, protocol: str) -> None:
    overrides = ["+experiment=ten_offline", f"+variant={strategy}_70", f"strategy.allocation={allocation}",
                 f"strategy.protocol={protocol}"] + (["strategy.masking_step=0"] if protocol == "compat" else [])
    bits = DECOMP[strategy, allocation, protocol]
    metrics, per_doc = {}, {}
    for bench, b in zip(("boolq", "arc_easy"), bits):
        metrics[f"ten/offline_{bench}/acc"] = b.count("1") / len(b)
        metrics[f"ten/offline_{bench}/n"] = float(len(b))
        per_doc[f"offline_{bench}"] = {"acc": b}
    ev = {"sources": {b: {"kind": "offline", "tasks": [f"offline_{b}"]} for b in ("boolq", "arc_easy")}, "per_doc": per_doc}
    write_job(root, f"{strategy}_{allocation}_{protocol}", job_config(*overrides), metrics, eval=ev,
              sparsity={"target": 0.7, "achieved": 0.7, "effective": 0.7 if strategy != "dart" else 0.66})


@pytest.fixture(scope="module")
def decomposition_md(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation_gain")
    for key in DECOMP:
        decomposition_job(root, *key)
    return make_report(collect_folders([root]), root / "tables", figures=False).markdown


def test_decomposition_rows_with_intervals(decomposition_md):
    md = decomposition_md.split("### Decomposition: strategy × allocation × protocol (acc, %)")[1]
    assert md_row(md, "Model", "Sparsity") == ["Model", "Sparsity", "Strategy", "allocation", "protocol", "target %",
                                               "effective %", "Avg (n=8)", "boolq (n=4)", "arc_easy (n=4)"]
    # (0.5 + 0.25) / 2; se: boolq 1100 -> sqrt(1/3)/2 = 0.2887, arc 1000 -> 0.25; Avg sqrt(.2887^2 + .25^2) / 2 = 0.1909
    assert md_row(md, "SmolLM2-135M", "70%", "Static (prompt)", "uniform", "causal")[5:] == [
        "70.0", "70.0", "37.5 ± 37.4", "50.0 ± 56.6", "25.0 ± 49.0"]
    # DART, causal: boolq has one-token answers, so it equals static_prompt by construction: not a number
    assert md_row(md, "SmolLM2-135M", "70%", "DART", "uniform", "causal")[5:] == [
        "70.0", "66.0‡", "62.5 ± 37.4", "≡", "75.0 ± 49.0"]
    # compat: nothing is decoded, DART == static_prompt everywhere: one row for both
    assert md_row(md, "SmolLM2-135M", "70%", "Static (prompt) ≡ DART", "uniform", "compat")[7] == "62.5 ± 37.4"
    assert "| DART | uniform | compat |" not in md.split("###")[0]
    assert "on boolq the answer is one token, so nothing is decoded after the prompt's mask and the drift detector " \
           "can never act" in md
    assert "Static (prompt) ≡ DART (compat): under protocol=compat the mask is traced from context and answer" in md
    # a compat DART run that differs from static_prompt cannot be right: flagged, not merged
    assert md_row(md, "SmolLM2-135M", "70%", "DART ⚠", "auto", "compat")[7:] == ["87.5 ± 24.5", "75.0 ± 49.0", "100.0 ± 0.0"]
    assert "DART differs from Static (prompt) although they cannot differ" in md


def test_decomposition_what_each_factor_adds(decomposition_md):
    md = decomposition_md.split("### What each factor adds (acc, points)")[1]
    assert md_row(md, "Model", "Sparsity") == ["Model", "Sparsity", "what", "held fixed", "Avg Δ", "boolq (n=4)",
                                               "arc_easy (n=4)"]
    # paired over documents: arc 1110 - 1000 = [0, 1, 1, 0]: +0.5, se sqrt(1/3)/2 -> ± 56.6; Avg (0 + 0.5) / 2
    assert md_row(md, "SmolLM2-135M", "70%", "re-tracing: DART − Static (prompt)", "allocation=uniform, protocol=causal")[4:] \
        == ["+25.0 ± 28.3", "≡", "+50.0 ± 56.6"]
    assert md_row(md, "SmolLM2-135M", "70%", "re-tracing: DART − Static (prompt)", "allocation=uniform, protocol=compat")[4:] \
        == ["0 by construction (compat)", "≡", "≡"]
    # identical by chance (it could differ on arc_easy): measured, and annotated as identical
    assert md_row(md, "SmolLM2-135M", "70%", "re-tracing: DART − Static (prompt) (identical results)",
                  "allocation=auto, protocol=causal")[4:] == ["+0.0 ± 0.0", "≡", "+0.0 ± 0.0"]
    assert ("re-tracing: DART − Static (prompt) with allocation=auto, protocol=causal: the two runs gave identical "
            "results (every metric equal)") in decomposition_md
    # compat - causal, static_prompt uniform: [0, 0, 1, 0] on both -> +25.0 ± 49.0 each, Avg ± 1.96 sqrt(2 * .25^2) / 2
    assert md_row(md, "SmolLM2-135M", "70%", "protocol: compat − causal", "Static (prompt), allocation=uniform")[4:] \
        == ["+25.0 ± 34.6", "+25.0 ± 49.0", "+25.0 ± 49.0"]
    # auto - uniform, GRIFFIN causal: boolq 1100 - 1000 = [0, 1, 0, 0]; arc equal
    assert md_row(md, "SmolLM2-135M", "70%", "allocation: auto − uniform", "GRIFFIN, protocol=causal")[4:] \
        == ["+12.5 ± 24.5", "+25.0 ± 49.0", "+0.0 ± 0.0"]


def test_no_decomposition_without_allocation_or_protocol(ten_sweep, tmp_path):
    md = make_report(collect_folders([ten_sweep]), tmp_path / "out", figures=False).markdown
    assert "Decomposition" not in md and "What each factor adds" not in md


# ----------------------------------------------------------------------------- accuracies with n and 95% intervals
def test_accuracy_intervals_from_stderr_per_document_results_or_p_and_n(tmp_path):
    from dart.stats import Z95

    cfg = job_config("+experiment=ten_offline", "+variant=dart_50")
    metrics = {  # boolq: lm-eval's stderr wins; rte: from the per-document results; hellaswag: from p and n alone
        "ten/offline_boolq/acc": 0.5, "ten/offline_boolq/n": 10.0, "ten/offline_boolq/acc_stderr": 0.1,
        "ten/offline_rte/acc": 0.75, "ten/offline_rte/n": 4.0,
        "ten/offline_hellaswag/acc": 0.2, "ten/offline_hellaswag/n": 26.0,
        # mmlu: a group (macro average over 2 subjects), per-document results per subject
        "ten/offline_mmlu/acc": 0.625, "ten/offline_mmlu/acc_micro": 0.6, "ten/offline_mmlu/n": 5.0,
    }
    per_doc = {"offline_boolq": {"acc": "1111100000"}, "offline_rte": {"acc": "1101"},
               "offline_mmlu_anatomy": {"acc": "10"}, "offline_mmlu_virology": {"acc": "110"}}
    sources = {b: {"kind": "offline", "tasks": [f"offline_{b}"]} for b in ("boolq", "rte", "hellaswag", "mmlu")}
    write_job(tmp_path, "a", cfg, metrics, eval={"sources": sources, "per_doc": per_doc})
    write_job(tmp_path, "b", job_config("+experiment=ten_offline", "+variant=dart_70"),
              {"ten/offline_boolq/acc": 0.5, "ten/offline_boolq/n": 2.0}, eval={"sources": {"boolq": sources["boolq"]}})
    md = make_report(collect_folders([tmp_path]), tmp_path / "out", figures=False).markdown
    header = md_row(md, "Model", "Method")
    # boolq scored 10 and 2 documents in the two rows: n goes into its cells; the others have one n each
    assert header[4:] == ["boolq", "rte (n=4)", "hellaswag (n=26)", "mmlu (n=5)", "Avg (n=45)"]
    se_rte = 0.25       # 1101: sample sd sqrt(0.25) = 0.5, / sqrt(4)
    se_hs = 0.08        # sqrt(p (1 - p) / (n - 1)) = sqrt(0.16 / 25)
    se_mmlu = (0.5 ** 2 + (1 / 3) ** 2) ** 0.5 / 2  # subjects 10 (0.7071 / sqrt 2 = 0.5) and 110 (0.5774 / sqrt 3)
    row = md_row(md, "SmolLM2-135M", "DART 50%")
    assert row[4:8] == ["50.0 ± 19.6 (n=10)", f"75.0 ± {100 * Z95 * se_rte:.1f}", f"20.0 ± {100 * Z95 * se_hs:.1f}",
                        f"62.5 ± {100 * Z95 * se_mmlu:.1f}"]
    assert row[4:8] == ["50.0 ± 19.6 (n=10)", "75.0 ± 49.0", "20.0 ± 15.7", "62.5 ± 58.9"]
    avg_se = (0.1 ** 2 + se_rte ** 2 + se_hs ** 2 + se_mmlu ** 2) ** 0.5 / 4
    assert row[8] == f"51.9 ± {100 * Z95 * avg_se:.1f}" == "51.9 ± 20.2"
    assert md_row(md, "SmolLM2-135M", "DART 70%")[4:] == ["50.0 ± 98.0 (n=2)", MISSING, MISSING, MISSING, MISSING]
    assert "±: 95% interval, 1.96 × standard error" in md


def test_harness_stderr_from_per_document_results():
    """dart.evals.harness: the per-document 0/1 results and the stderr lm-eval leaves out at bootstrap_iters=0."""
    from dart.evals.harness import per_doc_correctness, stderr_metrics

    samples = {"t1": [{"doc_id": 2, "acc": 0.0}, {"doc_id": 0, "acc": 1.0}, {"doc_id": 1, "acc": 1.0}],
               "g_a": [{"doc_id": 0, "acc": 1.0, "acc_norm": 0.5}, {"doc_id": 1, "acc": 0.0, "acc_norm": 1.0}],
               "g_b": [{"doc_id": 0, "acc": 1.0, "acc_norm": 1.0}, {"doc_id": 1, "acc": 1.0, "acc_norm": 1.0}]}
    results = {"results": {"t1": {"acc,none": 2 / 3, "acc_stderr,none": "N/A"}, "g": {"acc,none": 0.75},
                           "g_a": {"acc,none": 0.5, "acc_stderr,none": "N/A"}, "g_b": {"acc,none": 1.0}},
               "group_subtasks": {"g": ["g_a", "g_b"]}, "samples": samples}
    per_doc = per_doc_correctness(results)
    # doc_id order; acc_norm of g_a is not 0/1 (0.5): left out
    assert per_doc == {"t1": {"acc": "110"}, "g_a": {"acc": "10"}, "g_b": {"acc": "11", "acc_norm": "11"}}
    se = stderr_metrics(results, ["t1", "g"], per_doc)
    assert se["t1/acc_stderr"] == pytest.approx((1 / 3) ** 0.5 / 3 ** 0.5)      # sd of 1,1,0 = sqrt(1/3)
    assert se["g/acc_stderr"] == pytest.approx(((0.5 ** 2 + 0.0) ** 0.5) / 2)  # macro: sqrt(0.5^2 + 0^2) / 2
    assert se["g/acc_micro_stderr"] == pytest.approx(0.5 / 2)                  # pooled 1,0,1,1: sd 0.5, n 4
    results["results"]["t1"]["acc_stderr,none"] = 0.123                       # lm-eval's own number wins
    assert stderr_metrics(results, ["t1"], per_doc)["t1/acc_stderr"] == 0.123


def test_decomposition_with_a_failed_run_flags_nothing(tmp_path):
    for key in [("static_prompt", "uniform", "compat"), ("dart", "uniform", "causal")]:
        decomposition_job(tmp_path, *key)
    cfg = job_config("+experiment=ten_offline", "+variant=dart_70", "strategy.protocol=compat", "strategy.masking_step=0")
    write_job(tmp_path, "dart_compat", cfg, status="failed", error="RuntimeError: out of memory")
    md = make_report(collect_folders([tmp_path]), tmp_path / "out", figures=False).markdown
    section = md.split("### Decomposition")[1]
    assert md_row(section, "SmolLM2-135M", "70%", "DART", "uniform", "compat")[5:] == ["70.0"] + [MISSING] * 4  # target; effective, Avg, boolq, arc_easy
    assert "⚠" not in md and "≡ DART" not in md


def test_evaluation_kind_is_keyed_by_eval_name_not_the_class_path():
    """Every conf/eval config has its kind by `eval.name` (what each ran as by its class until now), and a run whose
    `_target_` names a renamed class keeps its kind: its tables do not silently become "other"."""
    from dart.tables.build import EVAL_KINDS, kind
    from dart.tables.collect import Record

    by_class = {"Harness": "ten", "Summarization": "summarization", "Drift": "drift", "Switch": "switch",
                "Fidelity": "fidelity", "Perplexity": "perplexity", "Detector": "detector"}
    for path in sorted((CONF / "eval").glob("*.yaml")):
        cfg = job_config(f"eval={path.stem}")
        assert kind(Record(source="x", status="complete", config=cfg)) == by_class[cfg["eval"]["_target_"].rsplit(".", 1)[1]]
        assert cfg["eval"]["name"] in EVAL_KINDS, path.name
    cfg = job_config("eval=switch")
    cfg["eval"]["_target_"] = "dart.evals.renamed.SwitchBenchmark"
    assert kind(Record(source="x", status="complete", config=cfg)) == "switch"
    cfg["eval"]["name"] = "my_own_eval"
    assert kind(Record(source="x", status="complete", config=cfg)) == "other"


def test_controls_table_pairs_each_control_with_the_detector(tmp_path):
    """Runs that vary strategy.retrace_at / on_retrace get the controls table: each row's Δ KL against the detector's
    run is the mean of the per-sample differences over the same two-topic samples, with a paired interval."""
    sweep = tmp_path / "controls"
    kl = {"dart": [1.0, 2.0, 3.0, 4.0], "random": [1.5, 2.5, 2.5, 4.5], "hold": [1.2, 2.6, 3.4, 4.8]}

    def run(name, strategy, *ov, key):
        samples = [{"index": i, "kind": "switch", "kl": v, "top1": 0.5, "retraces": 1} for i, v in enumerate(kl[key])]
        samples.append({"index": 9, "kind": "control", "kl": 9.0, "top1": 0.5, "retraces": 0})  # not a switch pair
        mean = sum(kl[key]) / 4
        metrics = {"switch/switch/kl": mean, "switch/switch/kl_lo": mean - 0.1, "switch/switch/kl_hi": mean + 0.1,
                   "switch/switch/top1": 0.5, "switch/switch/retraces": 1.0, "switch/all/n": 5.0}
        write_job(sweep, name, job_config(f"strategy={strategy}", "eval=switch", "sparsity=0.5", *ov), metrics,
                  eval={"samples": samples}, sparsity={"target": 0.5, "effective": 0.45, "dense_tokens": {"decode": 100}})

    run("dart", "dart", key="dart")
    run("random", "dart", "strategy.retrace_at=random", "strategy.retrace_rate=0.005", key="random")
    run("hold", "dart", "strategy.on_retrace=dense", key="hold")
    md = make_report(collect_folders([sweep]), tmp_path / "t", figures=False).markdown
    assert "### Re-trace controls: eval=switch" in md
    # labels name only the knobs that differ from the strategy's defaults (conf/strategy)
    rows = {r[4]: r for r in (md_row(md, "SmolLM2-135M", "200", "50.0", lab) for lab in
                               ("DART 50% (retrace_at=random, retrace_rate=0.005)", "DART 50% (on_retrace=dense)",
                                "DART 50%"))}
    assert set(rows) == {"random, new mask", "the detector, dense tokens only, same mask", "the detector, new mask"}
    assert rows["the detector, new mask"][-1] == "–"
    assert rows["random, new mask"][-1].startswith("+0.250 [")  # mean of (+0.5, +0.5, -0.5, +0.5)
    assert rows["the detector, dense tokens only, same mask"][-1].startswith("+0.500 [")  # (+0.2, +0.6, +0.4, +0.8)
    assert rows["random, new mask"][6] == "20"  # dense tokens per sample: 100 over 5 samples


def test_labels_fill_eval_keys_a_run_predates():
    """A run made before an eval knob existed reads as the knob's default (conf/eval/*.yaml), not as a different
    setting; a run that set the knob otherwise is labelled with it."""
    from dart.tables.labels import assign_labels

    def cfg(**ev):
        return {"strategy": {"name": "dart"}, "sparsity": 0.5, "eval": {"name": "switch", "limit": 48, **ev}}

    old, new = cfg(), cfg(batching="consecutive")
    assert [label for label, _ in assign_labels([old, new])] == ["DART 50%", "DART 50%"]
    labels = [label for label, _ in assign_labels([old, cfg(batching="clean")])]
    assert labels == ["DART 50%", "DART 50% (eval.batching=clean)"]  # only what differs from the default
    assert "batching" not in old["eval"]  # the run's own config is not changed


def test_drift_traces_one_per_sample_of_a_batch():
    """A batch generated together is one request: its windows and triggers are split by row, one trace per sample
    (not the rows' checks interleaved in one line)."""
    from types import SimpleNamespace

    from dart.tables.collect import drift_key, drift_windows

    w = [{"request": 1, "row": r, "step": s, "cosine": 0.9 - 0.1 * r, "threshold": 0.5} for s in (55, 60) for r in (0, 1)]
    rec = SimpleNamespace(results={"drift": {"windows": w + [{"request": 2, "step": 55, "cosine": 1.0, "threshold": 0.5}]}})
    by = drift_windows(rec)
    assert sorted(by) == [(1, 0), (1, 1), (2, 0)]
    assert [x["cosine"] for x in by[(1, 1)]] == pytest.approx([0.8, 0.8]) and len(by[(1, 0)]) == 2
    assert drift_key({"request": 3, "row": 7, "step": 90}) == (3, 7)


def test_summarization_gaps_pair_each_run_with_the_run_it_differs_from_by_one_thing(tmp_path):
    """Hand-built per-document ROUGE-L: each gap is the mean of the per-document differences against the right
    reference (the calibration mask, the prompt's mask, the same run with the default truncation)."""
    exp = ("+experiment=summarization_offline",)
    per_doc = {"static_50": (0.1, 0.2), "static_prompt_50": (0.2, 0.4), "dart_50": (0.3, 0.4),
               "static_prompt_50_cut": (0.1, 0.1)}
    for variant, (a, b) in per_doc.items():
        d = write_job(tmp_path, variant, job_config(*exp, f"+variant={variant}"),
                      {"summarization/wiki/rougeL": (a + b) / 2})
        (d / "summaries.jsonl").write_text("".join(json.dumps({"dataset": "wiki", "id": doc, "rougeL": v}) + "\n"
                                                   for doc, v in (("A", a), ("B", b))))
    md = make_report(collect_folders([tmp_path]), tmp_path / "out", figures=False).markdown
    table = md.split("where the gaps come from")[1].split("\n\n")[1]
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[2:5]): [c.strip() for c in line.strip("|").split("|")[7:]]
            for line in table.splitlines()[2:]}
    prompt = "Static (prompt) 50%"  # the default truncation is not named: labels show only what differs
    assert rows[("DART 50%", prompt, "re-tracing")][:3] == ["0.350", "0.300", "1.17x"]
    assert rows[("DART 50%", prompt, "re-tracing")][3].startswith("+0.050 [+0.000, +0.100]")
    assert rows[("DART 50%", "Static (calib.) 50%", "re-tracing, over the calibration mask")][:3] == ["0.350", "0.150", "2.33x"]
    assert rows[(prompt, "Static (calib.) 50%", "the prompt's mask instead of the calibration mask")][2:] == [
        "2.00x", "+0.150 [+0.100, +0.200]", "2"]
    cut = rows[("Static (prompt) 50% (eval.truncation=published)", prompt, "eval.truncation=published (the cue can be cut)")]
    assert cut[:3] == ["0.100", "0.300", "0.33x"] and cut[3].startswith("-0.200 [-0.300, -0.100]")
    assert len(rows) == 4  # no row for the calibration mask itself: it is the reference


def test_across_models_table_matches_methods_by_their_knobs_and_interpolates(tmp_path):
    """Two models, each with static_prompt at 30/50/70% and DART at 50% (45% effective): the table's cells are each
    method's own run at 50% (with its interval) and, at DART's 45%, static_prompt interpolated between 30% and 50%."""
    from dart.tables import across
    from dart.tables.collect import Record

    def run(model, strategy, sparsity, eff, kl, **knobs):
        from omegaconf import OmegaConf

        from dart.compose import strategy_config

        node = OmegaConf.to_container(strategy_config(strategy, sparsity=sparsity, **knobs).strategy, resolve=True)
        metrics = {"switch/switch/kl": kl, "switch/switch/kl_lo": kl - 0.1, "switch/switch/kl_hi": kl + 0.1,
                   "switch/switch/n": 36.0, "switch/switch/ppl_dense": 20.0, "switch/switch/retraces": 0.5}
        return Record(source=f"{model}/{strategy}/{sparsity}/{knobs}", status="complete", metrics=metrics,
                      config={"model": {"name": model}, "strategy": node, "sparsity": sparsity,
                              "eval": {"name": "switch"}},
                      results={"sparsity": {"target": sparsity, "effective": eff}})

    records = []
    for model, base in (("smollm2_135m", 1.0), ("qwen25_coder_1p5b", 0.5)):
        records += [run(model, "static_prompt", 0.3, 0.3, base), run(model, "static_prompt", 0.5, 0.5, base + 1.0),
                    run(model, "static_prompt", 0.7, 0.7, base + 3.0), run(model, "dart", 0.5, 0.45, base + 0.6),
                    run(model, "static_prompt", 0.5, 0.5, base + 0.2, prior_mix=0.3),
                    run(model, "dart", 0.5, 0.5, 9.0, budget="effective")]  # a knob away from the method: not in it
    assert [across.method_of(r) for r in records[:6]] == ["Static (prompt)"] * 3 + ["DART", "Static (prompt) + prior",
                                                                                      None]
    t = across.table(records)
    assert t.columns == ["Method", "SmolLM2-135M: at 50.0%", "SmolLM2-135M: at 45.0% (DART 50%)",
                         "Qwen2.5-Coder-1.5B-Instruct: at 50.0%", "Qwen2.5-Coder-1.5B-Instruct: at 45.0% (DART 50%)"]
    rows = {r[0]: r[1:] for r in t.rows}
    assert rows["Static (prompt)"] == ["2 [1.9, 2.1]", "1.75 (interp.)", "1.5 [1.4, 1.6]", "1.25 (interp.)"]
    assert rows["DART"] == ["no data in range", "1.6 [1.5, 1.7]", "no data in range", "1.1 [1, 1.2]"]
    assert rows["Static (prompt) + prior"][0] == "1.2 [1.1, 1.3]" and "GRIFFIN" not in rows
    assert any("code-instruct" in n for n in t.notes)


def test_controls_table_reads_a_users_own_pairs(tmp_path):
    """eval.pairs (a user's own pairs, kinds of the user's naming): the controls table reads KL on all the pairs, with
    the paired difference against the detector, instead of showing it missing."""
    sweep = tmp_path / "controls"
    kl = {"dart": [1.0, 2.0, 3.0], "random": [2.0, 2.0, 3.5]}

    def run(name, *ov, key):
        samples = [{"index": i, "kind": "mine", "kl": v, "top1": 0.5, "retraces": 1} for i, v in enumerate(kl[key])]
        mean = sum(kl[key]) / 3
        metrics = {"switch/mine/kl": mean, "switch/all/kl": mean, "switch/all/kl_lo": mean - 0.1,
                   "switch/all/kl_hi": mean + 0.1, "switch/all/top1": 0.5, "switch/all/retraces": 1.0,
                   "switch/all/n": 3.0}
        write_job(sweep, name, job_config("strategy=dart", "eval=switch", "eval.pairs=/data/p.jsonl", "sparsity=0.5",
                                          *ov), metrics, eval={"samples": samples},
                  sparsity={"target": 0.5, "effective": 0.45, "dense_tokens": {"decode": 60}})

    run("dart", key="dart")
    run("random", "strategy.retrace_at=random", key="random")
    md = make_report(collect_folders([sweep]), tmp_path / "t", figures=False).markdown
    ref = md_row(md, "SmolLM2-135M", "200", "50.0", "DART 50%")
    other = md_row(md, "SmolLM2-135M", "200", "50.0", "DART 50% (retrace_at=random)")
    assert ref[8] == "2.000 [1.900, 2.100]" and ref[-1] == "–"
    assert other[8] == "2.500 [2.400, 2.600]" and other[-1].startswith("+0.500 [")  # mean of (+1, 0, +0.5)


def test_labels_name_only_what_differs_from_the_strategys_defaults():
    from dart.tables.labels import assign_labels

    def cfg(strategy, **knobs):
        return {"strategy": {"name": strategy, "prior_mix": 0.0, "drift": {"min_margin": 0.3}, **knobs},
                "sparsity": 0.5, "eval": {"name": "switch"}}

    labels = [lab for lab, _ in assign_labels([cfg("dart"), cfg("dart", prior_mix=0.3),
                                               cfg("dart", drift={"min_margin": 0.1}), cfg("static_prompt"),
                                               cfg("static_prompt", prior_mix=0.3)])]
    assert labels == ["DART 50%", "DART 50% (prior_mix=0.3)", "DART 50% (drift.min_margin=0.1)", "Static (prompt) 50%",
                      "Static (prompt) 50% (prior_mix=0.3)"]


def test_speed_table_joins_runs_to_the_bench_and_picks_by_speed(tmp_path):
    """dart.tables --speed: each switch run beside its method's measured batch-1 speed-up (a variant bench method
    answers for its strategy; the prompt's mask with the prior for static_prompt_prior), dense added at KL 0, a run
    without a bench row noted; the pick at 1.2x / 1.4x / 1.6x is the lowest two-topic KL among the methods at least
    that fast."""
    root = tmp_path / "sweep"
    runs = {  # name: (overrides, two-topic KL, controls KL, effective)
        "sp50": (("strategy=static_prompt", "sparsity=0.5"), 1.5, 0.8, 0.5),
        "spp50": (("+variant=static_prompt_prior_50",), 1.2, 0.7, 0.5),
        "teal50": (("strategy=teal", "sparsity=0.5"), 0.2, 0.15, 0.49),
        "tp50": (("+variant=teal_published_cpu_50",), 0.3, 0.2, 0.55),
        "dart50": (("strategy=dart", "sparsity=0.5"), 1.1, 0.9, 0.45),
    }
    for name, (ov, kl, kl_c, eff) in runs.items():
        cfg = job_config("+experiment=switch_qwen_offline", *ov)
        m = {"switch/switch/kl": kl, "switch/switch/kl_lo": kl - 0.05, "switch/switch/kl_hi": kl + 0.05,
             "switch/control/kl": kl_c, "switch/control/kl_lo": kl_c - 0.05, "switch/control/kl_hi": kl_c + 0.05}
        write_job(root, name, cfg, m, sparsity={"target": 0.5, "effective": eff, "effective_model": 0.5
                                                if name == "tp50" else None})
    rows = [{"batch": 1, "loop": "lean", "mode": mode, "method": meth, "sparsity": sp, "tokens_per_s": tps,
             "speedup": su, "speedup_ci": [su - 0.05, su + 0.05]}
            for mode, meth, sp, tps, su in (("dense", "dense", 0.0, 10.0, 1.0), ("compacted", "static_prompt", 0.5, 14.0, 1.4),
                                            ("compacted", "static_prompt_prior", 0.5, 13.9, 1.39),
                                            ("sparse", "teal", 0.5, 13.0, 1.3), ("sparse", "teal_published_cpu", 0.5, 12.5, 1.25),
                                            ("compacted", "static_prompt", 0.7, 17.0, 1.7))]
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "bench.json").write_text(json.dumps({"config": {"model": "m", "dtype": "bfloat16"}, "rows": rows}))
    rep = make_report(collect_folders([root]), tmp_path / "out", speed=bench, only={"speed", "speed_pick", "speed_kl"})
    md = rep.markdown
    assert md_row(md, "Dense")[5:7] == ["10.0", "1.00x"]
    assert md_row(md, "Static (prompt) + prior")[6] == "1.39x [1.34, 1.44]"
    tp = md_row(md, "TEAL (published)")
    assert tp[2:5] == ["55.0", "50.0", "sparse"] and tp[7].startswith("0.300 [0.250, 0.350]")
    assert md_row(md, "TEAL", "50.0")[6] == "1.30x [1.25, 1.35]"
    assert "no bench row" in md and "DART 50%" in md  # dart was not benched
    # 1.2x: TEAL (0.2 at 1.30x); 1.4x: only static_prompt 50% (1.40x) reaches it; 1.6x: none of the runs
    assert md_row(md, "1.2x")[1:3] == ["TEAL 50.0%", "1.30x"]
    assert md_row(md, "1.4x")[1:3] == ["Static (prompt) 50.0%", "1.40x"]
    assert md_row(md, "1.6x")[1] == "none reaches it"
    assert (tmp_path / "out" / "speed_kl.png").is_file()
