"""Row labels: what a reader calls a run ("DART 70%", "GRIFFIN 50%", "Dense"), plus the knobs that tell apart
runs of one strategy inside a sweep ("DART 70% (ranking=max)"), and the order rows are shown in (models: their
names and order are dart.models.names')."""
from __future__ import annotations

import functools
import json
from typing import Any, Iterable

STRATEGY_NAMES = {"dense": "Dense", "static": "Static (calib.)", "static_prompt": "Static (prompt)", "cats": "CATS",
                  "teal": "TEAL", "wina": "WINA", "griffin": "GRIFFIN", "dart": "DART", "dart_published": "DART (published)",
                  "dart_plus": "DART+prior"}
STRATEGY_ORDER = ("dense", "static", "cats", "teal", "wina", "static_prompt", "griffin", "dart", "dart_published",
                  "dart_plus")
PER_TOKEN = ("cats", "teal", "wina")  # every token its own mask: run masked here (dart.strategies.per_token)
# config parts that are not knobs of a row: the model has its own column, the rest never changes a result
NOT_KNOB_PREFIXES = ("model.",)
# values that say nothing about a run: a job that left no results asked for dtype=auto, which became whatever its
# machine computes in (tables read the dtype a run computed in from results.json: dart.tables.collect.Record)
UNKNOWN = {"dtype": ("auto", None)}
NOT_KNOB_KEYS = ("strategy._target_", "strategy.name", "strategy.sparsity", "strategy.ranking", "sparsity", "eval._target_",
                 "eval.name")


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v
    return out


def short_key(key: str) -> str:
    """strategy.drift.enabled -> drift.enabled; ranking.name -> ranking."""
    if key.startswith("strategy."):
        key = key[len("strategy."):]
    if key.endswith(".name"):
        key = key[: -len(".name")]
    return key


def fmt_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def strategy_name(name: str) -> str:
    return STRATEGY_NAMES.get(name, name)


def base_label(strategy: str, sparsity: float | None) -> str:
    if strategy == "dense" or sparsity is None:
        return strategy_name(strategy)
    return f"{strategy_name(strategy)} {round(float(sparsity) * 100):g}%"


def with_eval_defaults(config: dict) -> dict:
    """The config with the eval keys it lacks filled from conf/eval/<eval.name>.yaml: a run made before a knob
    existed ran the behaviour the knob's default keeps (new knobs default to the old behaviour), so it must not
    read as a different setting (e.g. `eval.batching=null` beside `consecutive`). Keys present are never touched."""
    ev = config.get("eval")
    if not isinstance(ev, dict) or not ev.get("name"):
        return config
    defaults = _eval_defaults(str(ev["name"]))
    missing = {k: v for k, v in defaults.items() if k not in ev and not k.startswith("_") and k != "defaults"}
    return {**config, "eval": {**ev, **missing}} if missing else config


@functools.lru_cache(maxsize=None)
def _eval_defaults(name: str) -> dict:
    import yaml

    from dart.paths import repo_root

    path = repo_root() / "conf" / "eval" / f"{name}.yaml"
    if "/" in name or not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    return {k: v for k, v in data.items() if not isinstance(v, str) or "${" not in v}


@functools.lru_cache(maxsize=None)
def strategy_defaults(name: str, extra: tuple = ()) -> dict[str, Any]:
    """The flattened knobs of strategy=<name> as composed from conf/strategy (its YAML defaults), keyed like a run's
    flattened config ("strategy.drift.min_margin"), with `extra` ((key, value), ...) on top; {} for a strategy that
    conf/strategy does not have."""
    from dart.compose import options, strategy_config

    if name not in options("strategy"):
        return {}
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(strategy_config(name, sparsity=0.5).strategy, resolve=False)
    flat = flatten(node, "strategy.")
    flat.update({f"strategy.{k}": v for k, v in extra})
    return {k: v for k, v in flat.items() if k not in NOT_KNOB_KEYS and not (isinstance(v, str) and "${" in v)}


def is_default(key: str, value: Any, defaults: dict[str, Any]) -> bool:
    """A knob at its strategy's (or evaluation's) default: left out of a row's label. A run that predates a knob has
    no value for it (None): new knobs default to the old behaviour."""
    if value is None and key.startswith(("strategy.", "eval.")):
        return True
    return key in defaults and json.dumps(value, sort_keys=True, default=str) == json.dumps(
        defaults[key], sort_keys=True, default=str)


def varying_knobs(configs: Iterable[dict]) -> list[str]:
    """Config keys (flattened) whose value differs between the given configs, knobs only."""
    flats = [flatten(c) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    out = []
    for k in keys:
        if k in NOT_KNOB_KEYS or k.startswith(NOT_KNOB_PREFIXES):
            continue
        known = [f.get(k) for f in flats if f.get(k) not in UNKNOWN.get(k, ())]
        if len({json.dumps(v, sort_keys=True, default=str) for v in known}) > 1:
            out.append(k)
    return out


def assign_labels(configs: list[dict]) -> list[tuple[str, tuple]]:
    """(label, sort key) per config. Knobs are the keys that vary between configs of the SAME strategy on the SAME
    model (the model has its own column), so that a sweep over e.g. `ranking` labels its rows "DART 70%
    (ranking=max)", while the ten-benchmark table's rows stay "DART 70%" although GRIFFIN and DART differ in many
    strategy keys, and a table of several models does not label rows by what differs between the models' sweeps."""
    configs = [with_eval_defaults(c) for c in configs]
    by_strategy: dict[tuple[str, str], list[int]] = {}
    for i, c in enumerate(configs):
        key = ((c.get("strategy") or {}).get("name", "?"), str((c.get("model") or {}).get("name", "?")))
        by_strategy.setdefault(key, []).append(i)
    out: list[tuple[str, tuple]] = [("", ())] * len(configs)
    for (strategy, _), idx in by_strategy.items():
        knobs = varying_knobs([configs[i] for i in idx])
        defaults = strategy_defaults(strategy) if knobs else {}
        for i in idx:
            flat = flatten(configs[i])
            sparsity = configs[i].get("sparsity")
            label = base_label(strategy, sparsity)
            ev = configs[i].get("eval") or {}
            mine = {**defaults, **({f"eval.{k}": v for k, v in _eval_defaults(str(ev["name"])).items()}
                                   if isinstance(ev, dict) and ev.get("name") else {})}
            shown = [k for k in knobs if not is_default(k, flat.get(k), mine)]  # only what differs from the defaults
            if shown:
                label += " (" + ", ".join(f"{short_key(k)}={fmt_value(flat.get(k))}" for k in shown) + ")"
            rank = STRATEGY_ORDER.index(strategy) if strategy in STRATEGY_ORDER else len(STRATEGY_ORDER)
            knob_key = tuple(_sortable(flat.get(k)) for k in knobs)
            out[i] = (label, (rank, strategy, float(sparsity or 0.0), knob_key))
    return out


def _sortable(v: Any) -> tuple:
    if isinstance(v, bool) or v is None:
        return (0, str(v))
    if isinstance(v, (int, float)):
        return (1, float(v))
    return (2, str(v))
