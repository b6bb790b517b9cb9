"""One way to build a config: Hydra's compose API over `conf/`, for everything that is not `python -m dart.run`
(which Hydra composes itself from the same files).

    compose(["strategy=dart", "sparsity=0.7"])      # the run config `python -m dart.run strategy=dart sparsity=0.7` sees
    build_strategy("dart", sparsity=0.7, drift={"window": 4})    # its strategy, instantiated, knobs checked
    engine_spec(masking_step=3)                     # an EngineSpec from the engine's YAML defaults (tests, tools)

`sparsity` and `ranking` reach a strategy by interpolation (`sparsity: ${sparsity}` in its YAML), never by keyword:
`build_strategy` sets the top-level values and the strategy node resolves them, as in a run. Knobs are checked
against the composed node: a key the strategy does not have is a one-line error naming the knobs it has.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

from dart.errors import ConfigError, DartError, choice_error
from dart.paths import repo_root

CONF_DIR = repo_root() / "conf"


def options(group: str) -> list[str]:
    """The selectable options of a config group (files starting with `_` are shared bases, not options)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


def compose(overrides: Sequence[str] = (), config_name: str = "config"):
    """The config `python -m dart.run <overrides>` composes (Hydra's compose API; inside a running Hydra app, that
    app's search path, which is the same `conf/`). A fresh copy each call (compositions are cached per process)."""
    import copy

    return copy.deepcopy(_compose(tuple(overrides), config_name))


@functools.lru_cache(maxsize=256)
def _compose(overrides: tuple[str, ...], config_name: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from dart.sweep import register_resolver

    register_resolver()
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name=config_name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="dart"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def instantiate(node, **kwargs):
    """hydra.utils.instantiate, but a DartError raised by the target (a bad knob) reaches the user as itself, not
    wrapped in Hydra's "Error in call to target" with a traceback."""
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, **kwargs, _convert_="all")
    except Exception as e:
        cause = e
        while cause is not None and not isinstance(cause, DartError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise


def _value(v: Any) -> str:
    """A Python value as a Hydra override value."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return str(v)


def strategy_config(name: str = "dart", sparsity: float | None = None, ranking: str | None = None,
                    overrides: Sequence[str] = (), **knobs):
    """The run config of `strategy=<name>` (with `sparsity`, `ranking` and any other top-level overrides), its
    strategy node updated with `knobs` (dotted keys or nested dicts for nested knobs), each checked to exist."""
    from omegaconf import OmegaConf, open_dict

    if name not in options("strategy"):
        raise choice_error("strategy", name, options("strategy"))
    if ranking is not None and ranking not in options("ranking"):
        raise choice_error("ranking", ranking, options("ranking"))
    if sparsity is not None:
        from dart.config_checks import check_sparsity

        check_sparsity(sparsity)
    ov = [f"strategy={name}", *overrides]
    if sparsity is not None:
        ov.append(f"sparsity={_value(float(sparsity))}")
    if ranking is not None:
        ov.append(f"ranking={ranking}")
    cfg = compose(ov)
    node = cfg.strategy
    known = sorted(k for k in _flat_keys(OmegaConf.to_container(node, resolve=False))
                   if k not in ("_target_", "name"))
    for key, value in _flatten(knobs).items():
        if key in ("sparsity", "ranking"):
            raise ConfigError(f"{key} is a run-level value: pass it as build_strategy(..., {key}=...)")
        if key not in known:
            head = key.split(".")[0]
            hint = " (the drift detector is strategy=dart's)" if head == "drift" and head not in known else ""
            near = [k for k in known if k.startswith(head + ".")] or [k for k in known if "." not in k]
            raise ConfigError(f"{key}={value!r} is not a knob of strategy={name}{hint}; knobs: {', '.join(near) or 'none'}")
        with open_dict(node):
            OmegaConf.update(node, key, value, merge=False)
    return cfg


def build_strategy(name: str = "dart", sparsity: float | None = None, ranking: str | None = None,
                   overrides: Sequence[str] = (), **knobs):
    """The strategy `python -m dart.run strategy=<name> sparsity=... ranking=... strategy.<knob>=...` runs, with the
    same defaults (the YAML's), instantiated (`overrides`: more of the command line, e.g. +variant=...)."""
    cfg = strategy_config(name, sparsity=sparsity, ranking=ranking, overrides=overrides, **knobs)
    return instantiate(cfg.strategy)


def _flat_keys(d: Any, prefix: str = "") -> list[str]:
    out = []
    for k, v in (d or {}).items():
        out.append(prefix + str(k))
        if isinstance(v, dict):
            out += _flat_keys(v, f"{prefix}{k}.")
    return out


def _flatten(knobs: dict, prefix: str = "") -> dict[str, Any]:
    """{"drift": {"window": 4}, "masking_step": 2} -> {"drift.window": 4, "masking_step": 2} (dataclass specs too)."""
    import dataclasses

    out: dict[str, Any] = {}
    for k, v in knobs.items():
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            v = dataclasses.asdict(v)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


# ------------------------------------------------------------------------- the engine's specs from the YAML
@functools.lru_cache(maxsize=None)
def _engine_defaults() -> dict:
    from omegaconf import OmegaConf

    node = compose(["strategy=_engine"]).strategy
    return OmegaConf.to_container(node, resolve=True)


def _merged(base: dict, overrides: dict, where: str) -> dict:
    import copy

    out = copy.deepcopy(base)
    for key, value in _flatten(overrides).items():
        parts = key.split(".")
        d = out
        for p in parts[:-1]:
            if not isinstance(d.get(p), dict):
                raise ConfigError(f"{key} is not a knob of {where}")
            d = d[p]
        if parts[-1] not in d:
            raise ConfigError(f"{key} is not a knob of {where}; knobs: {', '.join(sorted(_flat_keys(base)))}")
        d[parts[-1]] = value
    return out


def engine_spec(**overrides):
    """An EngineSpec: the engine's YAML defaults (conf/strategy/_engine.yaml, as composed for a run with the default
    sparsity and ranking) with `overrides` (nested dicts or dotted keys for drift/auto)."""
    from dart.engine.spec import EngineSpec

    base = {k: v for k, v in _engine_defaults().items() if k != "calibration"}
    return EngineSpec.from_dict(_merged(base, overrides, "the engine"))


def drift_spec(**overrides):
    """A DriftSpec from the engine's YAML defaults with `overrides`."""
    from dart.engine.spec import DriftSpec, spec_from_dict

    return spec_from_dict(DriftSpec, _merged(_engine_defaults()["drift"], overrides, "strategy.drift"))


def auto_spec(**overrides):
    """An AutoAllocSpec (depth-aware allocation constants) from the YAML defaults with `overrides`."""
    from dart.engine.spec import AutoAllocSpec, spec_from_dict

    return spec_from_dict(AutoAllocSpec, _merged(_engine_defaults()["auto"], overrides, "strategy.auto"))


def calibration_spec(**overrides):
    """A CalibrationSpec (the calibration text's knobs) from the YAML defaults with `overrides`."""
    from dart.strategies.calibration import CalibrationSpec

    return CalibrationSpec.from_dict(_merged(_engine_defaults()["calibration"], overrides, "strategy.calibration"))


def spec_path(name: str) -> Path:
    return CONF_DIR / "strategy" / f"{name}.yaml"
