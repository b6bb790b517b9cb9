"""lm-evaluation-harness with a pruned model: `--model dart`.

    dart-lm-eval --model dart --model_args pretrained=PATH,strategy=dart,sparsity=0.7 --tasks TASK
    python -m dart.lm_eval_plugin --model dart ...          # the same
    dart-lm-eval ... --include_path dart:offline --tasks offline_boolq   # dart's offline task stand-ins

`dart-lm-eval` (a console script of this package) is lm-eval's own command line with this module imported first,
so that lm-eval's registry knows the model "dart". lm-eval 0.4.x discovers no plugins by itself (no entry-point
group): a plain `lm_eval --model dart` only works in a process that imported `dart.lm_eval_plugin`, e.g. from
Python: `import dart.lm_eval_plugin; lm_eval.simple_evaluate(model="dart", model_args={...}, tasks=[...])`.

model_args:
    pretrained   a local model folder (checked as `model.path` is) or a hub name
    strategy     a conf/strategy/<name>.yaml (dart, dart_published, dart_plus, static_prompt, griffin, static, cats,
                 dense); default dart, composed as `python -m dart.run strategy=<name>` composes it (dart.compose)
    sparsity     in [0, 1); default 0.5
    ranking      magnitude (default), max, mean, combined, product
    dtype        auto (bfloat16 on CUDA and on CPUs with native bf16, else float32), float32, bfloat16, float16
    any knob of the strategy's config, dotted for nested ones: masking_step=5, drift.enabled=False, ...
    the rest (max_length, forcing, ...) goes to dart.evals.lm.DartLM / lm-eval's HFLM.
"""
from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

from lm_eval.api.registry import register_model

from dart.compose import build_strategy
from dart.errors import ConfigError, DartError
from dart.evals.lm import DartLM

def _lm_params() -> set[str]:
    """Keyword arguments DartLM and lm-eval's HFLM take (everything else must be a strategy knob)."""
    from lm_eval.models.huggingface import HFLM

    names = set()
    for cls in (DartLM, HFLM):
        names |= {p.name for p in inspect.signature(cls.__init__).parameters.values()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names - {"self", "pretrained", "model", "tokenizer", "strategy", "device", "dtype", "batch_size"}


def load_pretrained(pretrained: str, device: str | None = None, dtype: str = "auto"):
    """(model, tokenizer, info) from a local folder (dart's folder checks apply) or a hub name, through dart's loader."""
    from omegaconf import OmegaConf

    import torch

    from dart.models.loading import load_model

    if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
        device = "auto"  # lm-eval's default is cuda:0 even on a machine without CUDA
    folder = Path(str(pretrained)).expanduser()
    cfg = {"name": folder.name, "init": "pretrained", "source": "hub", "hub_id": str(pretrained), "path": None}
    if folder.exists():
        cfg["path"] = str(folder)
    else:
        from dart.errors import UnavailableError
        from dart.hub import hub_cached, hub_reachable

        why = None if hub_cached(str(pretrained)) else hub_reachable()
        if why:
            raise UnavailableError(f"pretrained={str(pretrained)!r} is not a local folder, and the Hugging Face hub "
                                   f"cannot be reached to download it ({why}); give a model folder")
    try:
        loaded = load_model(OmegaConf.create(cfg), device=str(device), dtype=str(dtype))
    except DartError as e:  # the folder checks name `model.path`; here the user wrote `pretrained`
        raise type(e)(str(e).replace("model.path=", "pretrained=", 1)) from None
    return loaded.model, loaded.tokenizer, loaded.info


@register_model("dart")
class DartPrunedLM(DartLM):
    """lm-eval's `--model dart`: loads `pretrained`, attaches the strategy, and scores as dart.evals.lm.DartLM."""

    def __init__(self, pretrained: str, strategy: str = "dart", sparsity: float = 0.5, ranking: str = "magnitude",
                 batch_size: int | str = 1, max_length: int | None = None, device: str | None = None,
                 dtype: str = "auto", **kwargs):
        lm_params = _lm_params()
        knobs = {k: v for k, v in kwargs.items() if k not in lm_params}
        passthrough = {k: v for k, v in kwargs.items() if k in lm_params}
        try:
            pruning = build_strategy(strategy, sparsity=float(sparsity), ranking=ranking, **knobs)
        except ConfigError as e:  # name the place the user wrote the knob in
            if "is not a knob" not in str(e):
                raise
            raise ConfigError(f"model_args {e} (and sparsity, ranking, dtype, batch_size, max_length)") from None
        model, tokenizer, info = load_pretrained(pretrained, device=device, dtype=dtype)
        if isinstance(batch_size, str) and not batch_size.isdigit():
            print(f"[dart] batch_size={batch_size!r}: dart scores with a fixed batch size; using 1", file=sys.stderr)
            batch_size = 1
        pruning.attach(model, tokenizer)
        super().__init__(model, tokenizer, pruning, batch_size=int(batch_size), max_length=max_length, **passthrough)
        self.dart_info = {"model": info, "strategy": strategy, "sparsity": float(sparsity), "ranking": ranking,
                          "knobs": knobs}


OFFLINE_TASKS = "dart:offline"


def main(argv: list[str] | None = None) -> int:
    """`dart-lm-eval`: lm-eval's command line (`lm_eval ...`) with the model "dart" registered; a DartError (a bad
    model folder, strategy or knob) is one line and exit code 2. `--include_path dart:offline` names dart's offline
    task stand-ins (offline_boolq, offline_mmlu, ...)."""
    from lm_eval.__main__ import cli_evaluate

    argv = list(sys.argv[1:] if argv is None else argv)
    if OFFLINE_TASKS in argv:  # dart's offline stand-ins, their data paths made absolute for this process
        from dart.evals.tasks import offline_tasks_dir

        argv = [str(offline_tasks_dir()) if a == OFFLINE_TASKS else a for a in argv]
    sys.argv = [sys.argv[0], *argv]
    try:
        cli_evaluate()
    except DartError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
