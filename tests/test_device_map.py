"""`model.device_map`: a model spread over devices by accelerate (from_pretrained(device_map=...) for folders and
the hub, accelerate.dispatch_model for random-weight builds). Here only CPUs exist, so the maps put modules on
"cpu": the loader must accept them, place the model and give the same logits as a plain load."""
from __future__ import annotations


import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import REPO  # noqa: E402
from dart.compose import build_strategy  # noqa: E402
from dart.errors import ConfigError  # noqa: E402
from dart.models.loading import load_model  # noqa: E402

IDS = torch.tensor([[5, 17, 99, 3, 42, 77, 12, 8]])


def cfg(name="tiny_llama", **over):
    c = OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml")
    for k, v in over.items():
        c[k] = v
    return c


def per_module_map(n_layers: int, head="lm_head", prefix="model") -> dict:
    """An explicit map naming every top-level piece of a Llama: embeddings, each layer, norm, rotary, head."""
    dm = {f"{prefix}.embed_tokens": "cpu", f"{prefix}.norm": "cpu", f"{prefix}.rotary_emb": "cpu", head: "cpu"}
    dm.update({f"{prefix}.layers.{i}": "cpu" for i in range(n_layers)})
    return dm


def test_every_model_config_has_a_null_device_map():
    for path in sorted((REPO / "conf" / "model").glob("*.yaml")):
        c = OmegaConf.load(path)
        assert "device_map" in c and c.device_map is None, path.name


@pytest.mark.parametrize("device_map", ["explicit", "auto", "single"])
def test_random_build_dispatched_over_cpu_loads_and_runs(device_map):
    plain = load_model(cfg(), device="cpu", dtype="float32")
    dm = {"explicit": per_module_map(4), "auto": "auto", "single": {"": "cpu"}}[device_map]
    placed = load_model(cfg(device_map=dm), device="cpu", dtype="float32")
    ref = plain.model(IDS).logits
    got = placed.model(IDS).logits
    assert torch.equal(got, ref)  # the same seed, the same weights, wherever they sit
    assert set(placed.info["device_map"].values()) == {"cpu"}
    if device_map == "explicit":
        assert placed.info["device_map"] == dm
    assert all(p.device.type == "cpu" for p in placed.model.parameters())


def test_engine_runs_on_a_dispatched_model():
    from dart.strategies import Dart

    placed = load_model(cfg(device_map=per_module_map(4)), device="cpu", dtype="float32")
    model = placed.model
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    strat = build_strategy("dart", retrace_tokens=None, **{"drift.min_margin": 0.1}, sparsity=0.5, masking_step=1)
    strat.attach(model)
    try:
        out = model.generate(IDS, attention_mask=torch.ones_like(IDS), max_new_tokens=6, do_sample=False)
        assert out.shape == (1, 14) and strat.controller.compacted
    finally:
        strat.detach()


def test_folder_loaded_with_an_explicit_device_map(tmp_path):
    built = load_model(cfg(), device="cpu", dtype="float32")
    folder = tmp_path / "tiny"
    built.model.save_pretrained(folder)
    built.tokenizer.save_pretrained(folder)
    dm = per_module_map(4)
    loaded = load_model(cfg(path=str(folder), device_map=dm), device="cpu", dtype="float32")
    assert loaded.info["device_map"] == dm
    assert torch.equal(loaded.model(IDS).logits, built.model(IDS).logits)


@pytest.mark.parametrize("bad, match", [
    ("everywhere", "model.device_map.*auto"),
    ({"model.layers.0": ["cpu"]}, "must map module names to devices"),
    ({"model.layers.0": True}, "must map module names to devices"),
    ({}, "must map module names to devices"),
])
def test_bad_device_maps_fail_before_loading(bad, match):
    with pytest.raises(ConfigError, match=match):
        load_model(cfg(device_map=bad), device="cpu", dtype="float32")


def test_a_map_naming_a_missing_cuda_device_fails_in_one_line():
    from dart.errors import UnavailableError

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UnavailableError, match="no CUDA device"):
        load_model(cfg(device_map={"": "cuda:1"}), device="cpu", dtype="float32")
