"""Every config in every group composes, passes the early checks and instantiates (as lightning-hydra-template
tests its configs): a broken YAML fails here, not in the middle of a sweep."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from dart.config_checks import check_config

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


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
    s = instantiate(cfg.strategy, sparsity=cfg.sparsity, ranking=cfg.ranking.name, _convert_="all")
    assert s.name == strategy


@pytest.mark.parametrize("eval_name", options("eval"))
def test_every_eval(eval_name):
    cfg = compose_cfg(f"eval={eval_name}")
    check_config(cfg)
    ev = instantiate(cfg.eval, _convert_="all")
    assert ev.name == cfg.eval.name
