"""The dtype a run computes in: `dtype=auto` is the fastest precision the device computes natively.

- CUDA: bfloat16 where the GPU supports it, else float16.
- CPU: bfloat16 where the CPU has native bf16 matrix instructions (x86: AMX-BF16 or AVX512-BF16; Arm: the BF16
  extension), detected from the CPU's feature flags, never assumed; float32 elsewhere. On such a CPU a bf16 GEMM
  runs about 5x faster than fp32 and a bf16 GEMV reads half the bytes at the same rate; where bf16 is only
  emulated it is slower than fp32.
Whatever the dtype, the engine keeps its statistics in fp32 (dart.engine.stats). `DART_CPU_BF16=0` or `=1`
overrides the detection (e.g. to reproduce an fp32 run on a bf16 machine without naming the dtype).
"""
from __future__ import annotations

import functools
import os
import platform

from dart.errors import choice_error

DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")  # float64: exactness checks on a CPU
X86_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
ARM_BF16_FLAGS = ("bf16",)


def _cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of /proc/cpuinfo's text (x86 "flags", Arm "Features")."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def native_bf16_from_flags(flags: set[str], machine: str) -> bool:
    """Does a CPU with these feature flags compute bf16 matrix products natively?"""
    wanted = ARM_BF16_FLAGS if machine.lower() in ("aarch64", "arm64") else X86_BF16_FLAGS
    return any(f in flags for f in wanted)


@functools.lru_cache(maxsize=1)
def cpu_native_bf16() -> bool:
    """True where this CPU has native bf16 matrix instructions (read from /proc/cpuinfo; False where it cannot be
    read, e.g. macOS). `DART_CPU_BF16=0|1` overrides."""
    forced = os.environ.get("DART_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return False
    return native_bf16_from_flags(_cpu_flags(text), platform.machine())


def check_dtype(dtype) -> None:
    if dtype not in DTYPES:
        raise choice_error("dtype", dtype, DTYPES)


def resolve_dtype(dtype: str, device: str):
    """The torch dtype of `dtype` (a DTYPES name) on `device` ("cpu", "cuda", "cuda:N", "mps")."""
    import torch

    check_dtype(dtype)
    if dtype != "auto":
        return getattr(torch, dtype)
    if str(device).startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if str(device) == "cpu" and cpu_native_bf16():
        return torch.bfloat16
    return torch.float32


def dtype_name(dtype) -> str:
    """"bfloat16" for torch.bfloat16 (what results.json, benches and tables record)."""
    return str(dtype).replace("torch.", "")
