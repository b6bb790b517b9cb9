"""Building and loading the decode kernels (dart/kernels/csrc) as a torch C++ extension, once per machine.

The build lands in the project's cache, `<cache>/kernels/<key>/` (or `$DART_KERNELS_DIR/<key>/`), keyed by the CPU's instruction-set flags, the torch
version, the compiler and the sources: a build from one machine is never loaded on another. `setup.sh` builds it
(`python -m dart.kernels build`); otherwise the first use does, with one line saying so. With no C++ compiler (or no
ninja, or a failed build) one line says why and the kernels stay off: every product runs through torch, exactly as
without them. `DART_KERNELS=off` turns them off without trying.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("dense.cpp", "sparse.cpp", "attention.cpp", "permute.cpp", "bind.cpp")
HEADERS = ("common.h",)
ISA_NAMES = {0: "scalar C++", 1: "AVX2+FMA", 2: "AVX512-BF16"}
FLAGS = ("-O3", "-fopenmp", "-std=c++17")  # no -march: each ISA path is compiled for its own target and chosen
# at run time; -fopenmp so that ATen's parallel_for runs on torch's own OpenMP pool (its libgomp)


def log(msg: str) -> None:
    print(f"[dart] {msg}", file=sys.stderr, flush=True)


def cpu_flags() -> str:
    """The CPU's instruction-set flags (dart.runtime.cpu)."""
    from dart.runtime import cpu

    return cpu()["flags"]


def compiler() -> str | None:
    """The C++ compiler torch would use ($CXX, else c++ / g++ / clang++), or None."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=20).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return cxx


def key(cxx: str) -> str:
    """What a build depends on: CPU flags, torch, compiler, flags, sources."""
    import torch

    h = hashlib.sha256()
    for part in (cpu_flags(), torch.__version__, _compiler_version(cxx), " ".join(FLAGS), sys.version.split()[0]):
        h.update(part.encode() + b"\0")
    for name in (*SOURCES, *HEADERS):
        h.update((CSRC / name).read_bytes())
    return h.hexdigest()[:16]


def build_dir(k: str) -> Path:
    """<$DART_KERNELS_DIR, else the project's cache / kernels>/<key>."""
    from dart.paths import cache_root

    return Path(os.environ.get("DART_KERNELS_DIR") or cache_root() / "kernels") / k


def _ninja_on_path() -> bool:
    """torch builds with ninja: the one in this environment (pip's `ninja`, beside the interpreter) or the system's."""
    venv_bin = str(Path(sys.executable).parent)
    if venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    return shutil.which("ninja") is not None


def load(quiet: bool = False):
    """(module, None), or (None, the reason in one line) where the kernels cannot be had here."""
    if os.environ.get("DART_KERNELS", "auto").lower() in ("off", "0", "false", "no"):
        return None, "turned off (DART_KERNELS=off)"
    cxx = compiler()
    if cxx is None:
        return None, "no C++ compiler found (c++, g++ or clang++; $CXX)"
    if not _ninja_on_path():
        return None, "ninja not found (pip install ninja)"
    k = key(cxx)
    where = build_dir(k)
    where.mkdir(parents=True, exist_ok=True)
    fresh = not any(where.glob("*.so"))
    if fresh and not quiet:
        log(f"compiling the decode kernels for this CPU (once, about a minute) into {where}")
    t0 = time.perf_counter()
    try:
        from torch.utils.cpp_extension import load as torch_load

        mod = torch_load(name=f"dart_kernels_{k}", sources=[str(CSRC / s) for s in SOURCES],
                         extra_include_paths=[str(CSRC)], extra_cflags=list(FLAGS), extra_ldflags=["-fopenmp"],
                         build_directory=str(where), verbose=False)
    except Exception as e:  # a compiler error, a missing header: the kernels stay off, torch runs everything
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        return None, f"the build failed ({lines[-1][:200] if lines else type(e).__name__}; log in {where})"
    if fresh and not quiet:
        log(f"decode kernels ready ({ISA_NAMES.get(mod.isa(), '?')}) in {time.perf_counter() - t0:.0f} s")
    return mod, None
