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
