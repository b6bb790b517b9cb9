"""Every config in every group composes, passes the early checks and instantiates (as lightning-hydra-template
tests its configs): a broken YAML fails here, not in the middle of a sweep."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from dart.compose import build_strategy, options
from dart.config_checks import check_config

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_cfg(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=False)


def test_groups_have_the_documented_options():
    assert {"smollm2_135m", "gemma3_270m", "llama3_8b", "llama32_3b", "llama32_3b_instruct", "llama2_7b",
            "mistral_7b", "qwen3_4b", "tiny_llama", "tiny_gpt2"} <= set(options("model"))
    assert {"dense", "dart", "static_prompt", "griffin"} <= set(options("strategy"))
    assert options("ranking") == ["combined", "magnitude", "max", "mean", "product"]
    assert {"perplexity", "smoke"} <= set(options("eval"))


def test_default_config():
    cfg = compose_cfg()
    assert (cfg.model.name, cfg.strategy.name, cfg.eval.name, cfg.ranking.name) == ("smollm2_135m", "dart", "overview", "magnitude")
    assert (cfg.strategy.retrace_tokens, cfg.strategy.drift.min_margin, cfg.eval.limit) == (20, 0.3, 24)  # measured defaults
    check_config(cfg)


@pytest.mark.parametrize("model", options("model"))
def test_every_model_config(model):
    cfg = compose_cfg(f"model={model}")
    check_config(cfg)
    from dart.models.architectures import hf_config

    arch = {k: cfg.model.get(k) for k in ("model_type", "vocab_size", "hidden_size", "intermediate_size",
                                            "num_layers", "num_heads", "num_kv_heads", "head_dim", "tie_embeddings")}
    hf = hf_config({k: v for k, v in arch.items() if v is not None})
    assert hf.vocab_size == cfg.model.vocab_size


@pytest.mark.parametrize("strategy", options("strategy"))
@pytest.mark.parametrize("ranking", options("ranking"))
def test_every_strategy_and_ranking(strategy, ranking):
    cfg = compose_cfg(f"strategy={strategy}", f"ranking={ranking}")
    check_config(cfg)
    s = instantiate(cfg.strategy, _convert_="all")  # sparsity and ranking by interpolation, no keywords
    assert s.name == strategy and s.sparsity == cfg.sparsity


@pytest.mark.parametrize("strategy", options("strategy"))
def test_the_yaml_is_the_only_default(strategy):
    """Every engine strategy's spec is exactly its composed YAML node: the dataclasses have no defaults of their own
    (constructing one without every knob fails), so nothing else can disagree with the YAML."""
    import dataclasses

    from omegaconf import OmegaConf

    from dart.engine.spec import DriftSpec, EngineSpec

    cfg = compose_cfg(f"strategy={strategy}", "sparsity=0.7", "ranking=max")
    s = build_strategy(strategy, sparsity=0.7, ranking="max")
    node = OmegaConf.to_container(cfg.strategy, resolve=True)
    spec = getattr(s, "spec", None)
    if spec is None or strategy == "static":  # no engine knobs in its YAML (static: the engine's, fixed masks)
        return
    got = dataclasses.asdict(spec)
    want = {k: v for k, v in node.items() if k not in ("_target_", "name", "calibration")}
    want["drift"]["layers"] = list(want["drift"]["layers"])
    got["drift"]["layers"] = list(got["drift"]["layers"])
    assert got == want
    assert dataclasses.asdict(s.calibration) == node["calibration"]
    for cls in (EngineSpec, DriftSpec):
        with pytest.raises(TypeError):
            cls()


def test_build_strategy_is_a_run_strategy():
    """build_strategy (the Python API, dart-lm-eval, the benches) composes what `python -m dart.run` composes."""
    import dataclasses

    for name in ("dart", "dart_published", "dart_plus", "static_prompt", "griffin"):
        run = instantiate(compose_cfg(f"strategy={name}").strategy, _convert_="all")
        assert dataclasses.asdict(build_strategy(name).spec) == dataclasses.asdict(run.spec), name
    pub = build_strategy("dart_published").spec
    assert (pub.retrace_tokens, pub.drift.min_margin, pub.drift.min_windows, pub.published_quirks) == (None, 0.1, 1, True)


@pytest.mark.parametrize("eval_name", options("eval"))
def test_every_eval(eval_name):
    cfg = compose_cfg(f"eval={eval_name}")
    check_config(cfg)
    ev = instantiate(cfg.eval, _convert_="all")
    assert ev.name == cfg.eval.name
