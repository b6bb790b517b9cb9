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


def md_row(md: str, *first_cells: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[: len(first_cells)] == list(first_cells):
            return cells
    raise AssertionError(f"no row starting {first_cells} in:\n{md}")


@pytest.fixture(scope="module")
def ten_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("ten_offline")
    exp = ("+experiment=ten_offline", "model=smollm2_135m")
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
    assert header == ["Model", "Method", *OFFLINE, "Avg"]
    assert md_row(md, "SmolLM2-135M", "Dense") == ["SmolLM2-135M", "Dense", "100.0"] + ["50.0"] * 9 + ["55.0"]
    assert md_row(md, "SmolLM2-135M", "Static (prompt) 50%")[3] == "0.0"  # rte: a real zero
    assert md_row(md, "SmolLM2-135M", "DART 70%")[2:] == ["50.0", "50.0", "60.0", "50.0", "75.0"] + ["50.0"] * 5 + ["53.5"]
    failed = md_row(md, "SmolLM2-135M", "Static (prompt) 70%")
    assert failed[2:] == [MISSING] * 11  # every cell missing, none 0
    assert "failed: smollm2_135m / Static (prompt) 70% / eval=ten" in md and "RuntimeError: boom in the middle of mmlu" in md
    assert "second line" not in md
    # rows in the paper's order: dense, static, GRIFFIN, DART; 50% before 70%
    first_table = md.split("### DART minus GRIFFIN")[0]
    methods = [line.split("|")[2].strip() for line in first_table.splitlines() if line.startswith("| SmolLM2-135M")]
    assert methods == ["Dense", "Static (prompt) 50%", "Static (prompt) 70%", "GRIFFIN 50%", "GRIFFIN 70%", "DART 50%", "DART 70%"]
    assert "eval.limit=1 documents per task" in md


def test_gain_over_griffin_beside_the_paper(ten_sweep, tmp_path):
    md = make_report(collect_folders([ten_sweep]), tmp_path / "out").markdown
    assert md_row(md, "SmolLM2-135M", "50%") == ["SmolLM2-135M", "50%", "+25.0", "mmlu", MISSING]
    assert md_row(md, "SmolLM2-135M", "70%") == ["SmolLM2-135M", "70%", "+50.0", "arc_easy", MISSING]


def test_paper_gain_shows_for_llama3_8b_at_70(tmp_path):
    exp = ("+experiment=ten", "model=llama3_8b")
    real = {f"ten/{b}/acc": 0.5 for b in ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
                                          "openbookqa", "mmlu", "medmcqa", "gpqa_main_n_shot", "gpqa_diamond_n_shot",
                                          "gpqa_extended_n_shot"]}
    write_job(tmp_path, "g70", job_config(*exp, "+variant=griffin_70"), real)  # no eval.sources: read from the keys
    write_job(tmp_path, "d70", job_config(*exp, "+variant=dart_70"), dict(real, **{"ten/boolq/acc": 0.6}))
    report = make_report(collect_folders([tmp_path]), tmp_path / "out", figures=False)
    md = report.markdown
    assert md_row(md, "Llama-3.1-8B", "70%") == ["Llama-3.1-8B", "70%", "+10.0", "boolq", "+14.5"]
    assert "offline stand-ins" not in md
    assert md_row(md, "Llama-3.1-8B", "DART 70%")[-1] == "51.0"


def test_acc_norm_table_leaves_benchmarks_without_it_missing(tmp_path):
    metrics = {"ten/offline_boolq/acc": 0.5, "ten/offline_hellaswag/acc": 0.25, "ten/offline_hellaswag/acc_norm": 0.75}
    ev = {"sources": {b: {"kind": "offline", "tasks": [f"offline_{b}"]} for b in ("boolq", "hellaswag")}}
    write_job(tmp_path, "d", job_config("+experiment=ten_offline", "+variant=dart_50"), metrics, eval=ev)
    md = make_report(collect_folders([tmp_path]), tmp_path / "out", metric="acc_norm", figures=False).markdown
    assert "Ten benchmarks: acc_norm (%)" in md
    assert md_row(md, "SmolLM2-135M", "DART 50%")[2:] == [MISSING, "75.0", MISSING]
    assert "acc_norm exists only for" in md


def test_killed_job_and_never_started_jobs_are_reported(ten_sweep, tmp_path):
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(ten_sweep, sweep)
    # a job killed before writing results.json: Hydra's .hydra/config.yaml is all there is
    killed = sweep / "+variant=dart_70,model=smollm2_135m"
    (killed / "results.json").unlink()
    (killed / ".hydra").mkdir()
    (killed / ".hydra" / "config.yaml").write_text(yaml.safe_dump(dict(job_config("+experiment=ten_offline", "+variant=dart_70"),
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
    assert md_row(md, "SmolLM2-135M", "DART 70%")[2:] == [MISSING] * 11
    assert "no results.json (the job started but was killed before it finished, or is still running): smollm2_135m / DART 70%" in md
    assert "7 of the 14 jobs its last launch planned never started" in md
    assert "+variant=dart_70,model=tiny_llama" in md
    # the gain table lost its 70% row (DART 70% has no numbers) and keeps 50%
    assert md_row(md, "SmolLM2-135M", "50%")[2] == "+25.0"
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
    assert (tmp_path / "out" / "rougeL_bars.png").stat().st_size > 10_000


def test_offline_summarization_has_no_paper_columns(tmp_path):
    exp = ("+experiment=summarization_offline",)
    for variant, v in (("dense", 0.2), ("dart_50", 0.18)):
        write_job(tmp_path, variant, job_config(*exp, f"+variant={variant}"), {"summarization/wiki/rougeL": v})
    md = make_report(collect_folders([tmp_path]), tmp_path / "out", figures=False).markdown
    assert md_row(md, "Model", "Data set") == ["Model", "Data set", "Dense", "DART 50%"]
    assert md_row(md, "SmolLM2-135M", "wiki")[2:] == ["0.200", "0.180"]
    assert "offline stand-in" in md


def test_ablation_rows_are_labelled_by_the_knobs_that_vary(tmp_path):
    for i, ranking in enumerate(["product", "magnitude", "max"]):
        write_job(tmp_path, f"r{i}", job_config("+experiment=ablation_ranking_offline", f"ranking={ranking}"),
                  {"ten/offline_boolq/acc": 0.1 * (i + 1)})
    for variant in ("dart_l2", "dart_ema"):
        write_job(tmp_path / "stat", variant, job_config("+experiment=ablation_statistic_offline", f"+variant={variant}"),
                  {"ten/offline_boolq/acc": 0.5})
    md = make_report(collect_folders([tmp_path]), tmp_path / "out", figures=False).markdown
    # one table (one eval): both ablations; their knobs are ranking, statistic, ema_decay
    for lab in ("DART 70% (ranking=magnitude, ema_decay=null, statistic=l2)",
                "DART 70% (ranking=max, ema_decay=null, statistic=l2)",
                "DART 70% (ranking=magnitude, ema_decay=0.9, statistic=ema)"):
        assert f"| {lab} |" in md, md
    only = tmp_path / "only_ranking"
    for i, ranking in enumerate(["max", "magnitude"]):
        write_job(only, f"r{i}", job_config("+experiment=ablation_ranking_offline", f"ranking={ranking}"),
                  {"ten/offline_boolq/acc": 0.25 * (i + 1)})
    report = make_report(collect_folders([only]), tmp_path / "out2")
    assert report.figures == []  # one sparsity: no accuracy-vs-sparsity curve to draw
    md = report.markdown
    assert md_row(md, "SmolLM2-135M", "DART 70% (ranking=magnitude)")[2] == "50.0"
    assert md_row(md, "SmolLM2-135M", "DART 70% (ranking=max)")[2] == "25.0"


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
    assert md_row(md, "Model", "Method") == ["Model", "Method", "rougeL_vs_dense", "triggers_per_sample", "sparsity achieved"]
    assert md_row(md, "SmolLM2-135M", "DART 50%")[2:] == ["0.42", "0.5", "0.5"]
    assert md_row(md, "SmolLM2-135M", "Static (prompt) 50%")[2:] == ["0.31", "0", MISSING]
    figs = [f.name for f in report.figures]
    assert figs == ["drift_cosine_smollm2_135m_DART_50.png"]  # static_prompt has no detector: no trace
    assert (tmp_path / "out" / figs[0]).stat().st_size > 10_000


def test_latex_escapes_and_marks_missing(ten_sweep, tmp_path):
    make_report(collect_folders([ten_sweep]), tmp_path / "out", figures=False)
    tex = (tmp_path / "out" / "tables.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\toprule" in tex
    assert r"Static (prompt) 70\% & -- & --" in tex
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
    assert "| SmolLM2-135M | Dense | 100.0 |" in proc.stdout
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
    assert md_row(md, "SmolLM2-135M", "DART 50%")[2:4] == ["75.0", "50.0"]
    assert md_row(md, "SmolLM2-135M", "DART 70%")[2:] == [MISSING] * 3
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
    assert md_row(md, "SmolLM2-135M", "Dense")[2] == "50.0"
