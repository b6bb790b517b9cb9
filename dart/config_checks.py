"""Checks on the composed config that run before anything heavy is imported or any model loads: a bad value
fails in well under a second with a message naming it and the allowed values."""
from __future__ import annotations

import os

from dart.errors import ConfigError, UnavailableError, choice_error

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def check_sparsity(value) -> float:
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"sparsity={value!r} is not a number; allowed: a fraction in [0, 1), e.g. 0.5") from None
    if not 0.0 <= s < 1.0:
        raise ConfigError(f"sparsity={value!r} is outside [0, 1); allowed: a fraction in [0, 1), e.g. 0.5 or 0.7")
    return s


def check_device(device) -> None:
    d = str(device)
    if d in ("auto", "cpu", "cuda", "mps") or (d.startswith("cuda:") and d[5:].isdigit()):
        return
    raise choice_error("device", device, DEVICES)


def check_logger(cfg) -> None:
    kind = cfg.get("kind", "none")
    if kind not in ("wandb", "none"):
        raise choice_error("logger", kind, ("wandb", "none"))
    if kind != "wandb":
        return
    mode = cfg.get("mode", "offline")
    if mode not in ("offline", "online"):
        raise choice_error("logger.mode", mode, ("offline", "online"))
    if mode == "online" and not wandb_key_available():
        raise UnavailableError(
            "logger.mode=online needs a W&B API key: set WANDB_API_KEY or run `wandb login`; "
            "or keep logger.mode=offline (default) and `wandb sync` later, or logger=none"
        )


def wandb_key_available() -> bool:
    """A W&B API key is set (WANDB_API_KEY) or stored by `wandb login` (~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        with open(netrc) as f:
            return "api.wandb.ai" in f.read()
    except OSError:
        return False


def check_config(cfg) -> None:
    """Every cheap check on a composed run config."""
    from dart.models.loading import validate_model_cfg
    from dart.models.precision import check_dtype

    check_sparsity(cfg.sparsity)
    check_device(cfg.device)
    check_dtype(cfg.dtype)
    validate_model_cfg(cfg.model)
    check_logger(cfg.logger)
    strategy = cfg.get("strategy") or {}
    if "_target_" not in strategy:
        raise ConfigError("the strategy config has no _target_; pick one with strategy=<name>")
    if "_target_" not in (cfg.get("eval") or {}):
        raise ConfigError("the eval config has no _target_; pick one with eval=<name>")
