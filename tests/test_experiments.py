"""Every experiment config (experiments/*.yaml, selected with +experiment=NAME) composes, and so does every job
of its grid: each passes the early checks and instantiates its strategy and evaluation, as a sweep would, so
a broken experiment fails here and not in the middle of a sweep. Plus the launcher configs."""
from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dart.compose import options
from dart.config_checks import check_config
from dart.tables.collect import planned_jobs  # noqa: F401  (the same grid expansion the tables use)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
EXPERIMENTS = sorted(p.stem for p in (REPO / "experiments").glob("*.yaml"))
PAPER = [e for e in EXPERIMENTS if not e.endswith("_offline")]
HUB_MODELS = {"llama3_8b", "llama32_3b", "llama2_7b", "mistral_7b", "qwen3_4b", "llama32_3b_instruct"}


def compose_cfg(*overrides: str, hydra: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


def grid(name: str, *extra: str) -> list[list[str]]:
    """The job overrides the basic sweeper makes of `python -m dart.run -m +experiment=NAME [EXTRA ...]`."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = compose_cfg(f"+experiment={name}", hydra=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    parser = OverridesParser.create()
    return BasicSweeper.split_arguments(parser.parse_overrides(params + [f"+experiment={name}", *extra]), None)[0]


@functools.lru_cache(maxsize=None)
def jobs(name: str) -> tuple:
    """((job overrides, composed job config), ...) of an experiment, composed in one Hydra context."""
    todo = grid(name)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        out = tuple((tuple(job), compose(config_name="config", overrides=list(job))) for job in todo)
    for _, cfg in out:
        OmegaConf.set_struct(cfg, False)
        cfg.sweep_name = name  # the ${now:...} default needs a running Hydra app
    return out


def job_dirname(job: list[str], cfg) -> str:
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra.core.override_parser.overrides_parser import OverridesParser

    od = cfg.hydra.job.config.override_dirname
    return get_overrides_dirname(OverridesParser.create().parse_overrides(job), list(od.exclude_keys), od.item_sep, od.kv_sep)


def test_the_experiment_group_is_a_relative_link_to_experiments():
    link = CONF / "experiment"
    assert link.is_symlink() and os.readlink(link) == "../experiments"  # works from any clone
    assert {"ten", "ten_offline", "summarization", "summarization_offline", "drift", "drift_offline"} <= set(EXPERIMENTS)
    assert {f"ablation_{a}" for a in ("ranking", "masking_step", "statistic", "allocation", "drift", "protocol")} <= set(PAPER)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_header_sweep_name_and_twin(name):
    text = (REPO / "experiments" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    cfg = compose_cfg(f"+experiment={name}", hydra=True)
    assert cfg.sweep_name == name  # fixed: a re-run resumes in place
    assert cfg.hydra.sweep.dir == f"multirun/{name}"
    assert len(cfg.hydra.sweeper.params) >= 1
    if name in PAPER:
        assert f"{name}_offline" in EXPERIMENTS, f"{name} has no offline twin"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_job_of_every_experiment_composes_and_instantiates(name):
    composed = jobs(name)
    assert len(composed) >= 2
    cfg0 = compose_cfg(f"+experiment={name}", hydra=True)
    dirs = set()
    for job, cfg in composed:
        check_config(cfg)
        strategy = instantiate(cfg.strategy, sparsity=float(cfg.sparsity), ranking=cfg.ranking.name, _convert_="all")
        evaluator = instantiate(cfg.eval, _convert_="all")
        assert strategy.name == cfg.strategy.name and evaluator.name == cfg.eval.name
        if name.endswith("_offline"):  # the embedded models only (Gemma and the 1.5B Qwen are optional)
            model = "gemma3_270m" if "gemma" in name else "qwen25_coder_1p5b" if "qwen" in name else "smollm2_135m"
            assert cfg.model.name == model
            # pinned: the committed SmolLM2/Gemma results were computed in fp32; the 1.5B model runs in bf16 only
            assert cfg.dtype == ("bfloat16" if model == "qwen25_coder_1p5b" else "float32")
            assert cfg.eval.get("source", "offline") == "offline"
            assert set(cfg.eval.get("datasets") or ["wiki"]) == {"wiki"}
        else:
            assert cfg.model.name in HUB_MODELS
        dirs.add(job_dirname(list(job), cfg0))
    assert len(dirs) == len(composed), "two jobs of one sweep would share a folder"
    assert not any("experiment=" in d for d in dirs)  # the sweep folder already names the experiment


VARIANTS = sorted(p.stem for p in (CONF / "variant").glob("*.yaml"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_composes_and_instantiates(variant):
    text = (CONF / "variant" / f"{variant}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    cfg = compose_cfg(f"+variant={variant}", "sweep_name=x")
    check_config(cfg)
    strategy = instantiate(cfg.strategy, sparsity=float(cfg.sparsity), ranking=cfg.ranking.name, _convert_="all")
    name, _, rest = variant.rpartition("_")
    if rest.isdigit() and name in options("strategy"):  # a table row: strategy_<percent>
        assert (strategy.name, cfg.sparsity) == (name, int(rest) / 100)
    elif variant == "dense":
        assert (strategy.name, cfg.sparsity) == ("dense", 0.0)
    else:  # knobs that go together, on the strategy the variant names (or the variant it builds on names)
        while (named := re.search(r"override /strategy: (\w+)", text)) is None:
            base = re.search(r"^  - (\w+)$", text, re.M).group(1)
            text = (CONF / "variant" / f"{base}.yaml").read_text()
        assert strategy.name == named.group(1)


def test_ten_grid_runs_dense_once_per_model():
    rows = {(cfg.model.name, cfg.strategy.name, cfg.sparsity) for _, cfg in jobs("ten")}
    assert len(jobs("ten")) == len(rows) == 35
    assert {r for r in rows if r[1] == "dense"} == {(m, "dense", 0.0) for m in
                                                    ("llama3_8b", "llama32_3b", "llama2_7b", "mistral_7b", "qwen3_4b")}
    assert {(s, p) for _, s, p in rows if s != "dense"} == {(s, p) for s in ("static_prompt", "griffin", "dart") for p in (0.5, 0.7)}
    offline = {(cfg.strategy.name, cfg.sparsity) for _, cfg in jobs("ten_offline")}
    assert len(jobs("ten_offline")) == 7 and offline == {(s, p) for _, s, p in rows}


def test_a_grid_split_over_gpus_fills_the_same_folders():
    """The multi-GPU recipe of docs/sweeps.md: one sweep per GPU over a part of the models, same job folders as one sweep."""
    cfg0 = compose_cfg("+experiment=ten", hydra=True)
    folders = lambda *extra: {job_dirname(j, cfg0) for j in grid("ten", *extra)}  # noqa: E731
    parts = [folders("model=llama3_8b,llama2_7b"), folders("model=mistral_7b,qwen3_4b"), folders("model=llama32_3b")]
    assert [len(p) for p in parts] == [14, 14, 7]
    assert set().union(*parts) == folders()


@pytest.mark.parametrize("name, knob, values", [
    ("ablation_ranking", "ranking.name", ["combined", "magnitude", "max", "mean", "product"]),
    ("ablation_masking_step", "strategy.masking_step", [1, 5, 10, 20, 50]),
    ("ablation_masking_step_offline", "strategy.masking_step", [1, 5, 10, 20]),
    ("ablation_statistic", "strategy.statistic", ["ema", "l2"]),
    ("ablation_allocation", "strategy.allocation", ["auto", "uniform"]),
    ("ablation_drift", "strategy.drift.enabled", [False, True]),
    ("ablation_protocol", "strategy.protocol", ["causal", "compat"]),
])
def test_ablations_sweep_their_knob_on_dart(name, knob, values):
    seen = []
    for _, cfg in jobs(name):
        assert cfg.strategy.name == "dart"
        seen.append(OmegaConf.select(cfg, knob))
    assert sorted(seen, key=str) == sorted(values, key=str)


def test_paper_settings():
    s = compose_cfg("+experiment=summarization", "+variant=dart_50")
    assert (s.model.name, s.ranking.name, s.sparsity, s.eval.limit, s.eval.max_input_tokens) == ("llama32_3b_instruct", "max", 0.5, 100, 1024)
    assert list(s.eval.datasets) == ["cnn_dailymail", "xsum", "multi_news", "gov_report"]
    d = compose_cfg("+experiment=drift", "+variant=dart_50")
    assert (d.strategy.masking_step, d.eval.max_new_tokens, d.sparsity, d.strategy.drift.enabled) == (50, 500, 0.5, True)
    t = compose_cfg("+experiment=ten", "+variant=griffin_70", "model=llama3_8b")
    assert (t.ranking.name, t.eval.source, t.strategy.name, t.sparsity) == ("magnitude", "real", "griffin", 0.7)
    c = compose_cfg("+experiment=ablation_protocol", "+variant=dart_compat")
    assert (c.strategy.protocol, c.strategy.masking_step, c.sparsity) == ("compat", 0, 0.7)
    e = compose_cfg("+experiment=ablation_statistic", "+variant=dart_ema")
    assert (e.strategy.statistic, e.strategy.ema_decay) == ("ema", 0.9)


@pytest.mark.parametrize("launcher, target", [
    ("basic", "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
    ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
    ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
])
def test_launcher_configs(launcher, target):
    cfg = compose_cfg(f"hydra/launcher={launcher}", "+experiment=ten_offline", hydra=True)
    assert cfg.hydra.launcher._target_ == target
    if launcher == "slurm":
        assert (cfg.hydra.launcher.gpus_per_node, cfg.hydra.launcher.tasks_per_node) == (1, 1)
        assert cfg.hydra.launcher.timeout_min >= 60


def test_the_app_finds_experiments_and_variants():
    proc = subprocess.run([sys.executable, "-m", "dart.run", "+experiment=ten_offline", "+variant=dart_70", "--cfg", "job"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert (cfg.sweep_name, cfg.strategy.name, cfg.sparsity, cfg.eval.name, cfg.eval.limit) == ("ten_offline", "dart", 0.7, "ten", None)
    assert cfg.eval.benchmarks is None  # every item of all ten stand-ins
