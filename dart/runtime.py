"""What every entry point does before heavy work: quiet third-party libraries, and record the versions of the
stack a result was computed with."""
from __future__ import annotations

import logging
import os
import platform
import warnings


def quiet_libraries() -> None:
    """No third-party noise a user cannot act on; real warnings stay (each filter names one message)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    # Lightning 2.6 builds torch's LeafSpec, which torch 2.13 deprecates (nothing here to change)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    for name in ("absl", "lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning_fabric",
                 "lightning.pytorch.trainer.connectors.signal_connector"):  # "Received SIGTERM": dart says it itself
        logging.getLogger(name).setLevel(logging.WARNING)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def versions() -> dict[str, str]:
    import lightning
    import lm_eval
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "lightning": lightning.__version__, "lm_eval": getattr(lm_eval, "__version__", "?")}


def cpu() -> dict[str, str]:
    """The CPU a run computed on: its model name and its instruction-set flags (Linux: /proc/cpuinfo; elsewhere the
    processor's name for both). Results record it (per-token thresholds sit where fp32 rounding differs between CPUs:
    docs/results.md says how far committed numbers move), and the decode kernels' build is keyed by the flags."""
    from pathlib import Path

    model = flags = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if model is None and key in ("model name", "Model", "Hardware"):
                model = line.split(":", 1)[1].strip()
            elif flags is None and key in ("flags", "Features"):
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    fallback = f"{platform.machine()} {platform.processor()}".strip()
    return {"model": model or fallback, "flags": flags or fallback}


def release_memory() -> None:
    """Give the memory of freed large tensors back to the system (glibc's malloc_trim; elsewhere nothing). Moving a
    model's weights to another layout and back frees gigabytes in tensors of tens of MB, which glibc's allocator keeps
    in its heap once its dynamic mmap threshold has risen: without this, a bench that attaches a per-token method again
    and again grows until the system kills it."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass
