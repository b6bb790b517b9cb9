"""dtype=auto: bfloat16 where the device computes it natively (detected from the CPU's feature flags, never assumed),
float32 elsewhere; what a run computed in is recorded (results.json's model section, the tables' model column)."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from dart.errors import ConfigError
from dart.models import precision
from dart.models.precision import _cpu_flags, native_bf16_from_flags, resolve_dtype

SAPPHIRE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl avx512_vnni\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd atomics\n"


@pytest.fixture
def detected(monkeypatch):
    """Set what the detection sees: detected(True / False)."""
    def set_to(value: bool):
        monkeypatch.setattr(precision, "cpu_native_bf16", lambda: value)
    return set_to


def test_flags_both_ways():
    assert native_bf16_from_flags(_cpu_flags(SAPPHIRE), "x86_64")
    assert not native_bf16_from_flags(_cpu_flags(SKYLAKE), "x86_64")  # AVX-512 without BF16: emulated, slower than fp32
    assert native_bf16_from_flags(_cpu_flags(GRAVITON3), "aarch64")
    assert not native_bf16_from_flags(_cpu_flags(GRAVITON2), "aarch64")
    assert not native_bf16_from_flags(set(), "x86_64")


def test_auto_follows_the_detection(detected):
    detected(True)
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    detected(False)
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("float32", "cpu") == torch.float32  # a named dtype is never changed
    detected(True)
    assert resolve_dtype("float32", "cpu") == torch.float32 and resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ConfigError, match=r"dtype='fp8' is not supported; allowed: auto, float32"):
        resolve_dtype("fp8", "cpu")


def test_environment_override(monkeypatch):
    precision.cpu_native_bf16.cache_clear()
    monkeypatch.setenv("DART_CPU_BF16", "0")
    assert precision.cpu_native_bf16() is False
    precision.cpu_native_bf16.cache_clear()
    monkeypatch.setenv("DART_CPU_BF16", "1")
    assert precision.cpu_native_bf16() is True
    precision.cpu_native_bf16.cache_clear()


@pytest.mark.parametrize("native,expected", [(True, "bfloat16"), (False, "float32")])
def test_a_loaded_model_computes_and_records_the_dtype(detected, native, expected):
    from dart.models.loading import load_model

    detected(native)
    cfg = OmegaConf.load("conf/model/tiny_llama.yaml")
    loaded = load_model(cfg, device="cpu", dtype="auto")
    assert loaded.info["dtype"] == expected
    assert next(loaded.model.parameters()).dtype == getattr(torch, expected)


def test_tables_record_the_dtype_a_run_computed_in():
    from dart.tables.collect import Record
    from dart.tables.labels import assign_labels
    from dart.tables.report import dtype_note

    def run(dtype_asked, ran, sparsity=0.5):
        return Record(source="x", status="complete", results={"model": {"dtype": ran, "label": "SmolLM2-135M"}},
                      config={"model": {"name": "smollm2_135m"}, "dtype": dtype_asked, "sparsity": sparsity,
                              "strategy": {"name": "dart"}})

    a, b = run("auto", "float32"), run("float32", "float32", 0.7)
    assert a.config["dtype"] == "float32" and a.dtype == "float32"  # what auto became, as results.json says
    assert [lab for lab, _ in assign_labels([a.config, b.config])] == ["DART 50%", "DART 70%"]  # not a knob here
    c = run("auto", "bfloat16")
    assert [lab for lab, _ in assign_labels([a.config, c.config])] == ["DART 50% (dtype=float32)",
                                                                         "DART 50% (dtype=bfloat16)"]
    assert dtype_note([a, b, c]) == "Computed in: SmolLM2-135M fp32 and bf16."
    never = Record(source="y", status="no_results", config={"model": {"name": "smollm2_135m"}, "dtype": "auto"})
    assert never.dtype is None and dtype_note([never]) == "Computed in: SmolLM2-135M dtype unknown (no results)."
