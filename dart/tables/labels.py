"""Row labels: what a reader calls a run ("DART 70%", "GRIFFIN 50%", "Dense"), plus the knobs that tell apart
runs of one strategy inside a sweep ("DART 70% (ranking=max)"), and the order rows and models are shown in."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Iterable

STRATEGY_NAMES = {"dense": "Dense", "static": "Static (calib.)", "static_prompt": "Static (prompt)", "cats": "CATS",
                  "griffin": "GRIFFIN", "dart": "DART", "dart_published": "DART (published)", "dart_plus": "DART+prior"}
STRATEGY_ORDER = ("dense", "static", "cats", "static_prompt", "griffin", "dart", "dart_published", "dart_plus")
MODEL_ORDER = ("llama3_8b", "llama32_3b", "llama2_7b", "mistral_7b", "qwen3_4b", "llama32_3b_instruct")
MODEL_NAMES = {"llama3_8b": "Llama-3.1-8B", "llama32_3b": "Llama-3.2-3B", "llama2_7b": "Llama-2-7B",
               "mistral_7b": "Mistral-7B", "qwen3_4b": "Qwen3-4B", "llama32_3b_instruct": "Llama-3.2-3B-Instruct",
               "smollm2_135m": "SmolLM2-135M", "gemma3_270m": "Gemma3-270M"}
# config parts that are not knobs of a row: the model has its own column, the rest never changes a result
NOT_KNOB_PREFIXES = ("model.",)
NOT_KNOB_KEYS = ("strategy._target_", "strategy.name", "sparsity", "eval._target_", "eval.name")


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


def model_name(name: str | Mapping) -> str:
    """The display name of a model config name ("llama3_8b" -> "Llama-3.1-8B"); given a run's model config section
    (a mapping), its full label (`model_label`), which says when the weights are random."""
    if isinstance(name, Mapping):
        return model_label(name)
    return MODEL_NAMES.get(name, name)


def model_label(model: Mapping, loaded: Mapping | None = None) -> str:
    """What a reader calls the model of a run. `model`: the run config's model section; `loaded`: results.json's
    model section, whose `label` (made when the model was loaded, from a local folder's own config.json) wins.

    Random weights always say so: "Llama-3.1-8B shape, random, 2 layers" (model=llama3_8b model.init=random
    model.num_layers=2), "tiny_llama (tiny, random)"; a local folder is named by the folder, never by the config
    group it was loaded through."""
    if loaded and loaded.get("label"):
        return str(loaded["label"])
    name = str(model.get("name", "?"))
    if model.get("path"):
        return f"{PurePath(str(model['path'])).name or model['path']} (local folder)"
    if model.get("source") == "tiny":
        return f"{model_name(name)} (tiny, random)"
    if model.get("init") == "random":
        layers = model.get("num_layers")
        return f"{model_name(name)} shape, random" + (f", {layers} layer{'' if layers == 1 else 's'}" if layers else "")
    return model_name(name)


def base_label(strategy: str, sparsity: float | None) -> str:
    if strategy == "dense" or sparsity is None:
        return strategy_name(strategy)
    return f"{strategy_name(strategy)} {round(float(sparsity) * 100):g}%"


def varying_knobs(configs: Iterable[dict]) -> list[str]:
    """Config keys (flattened) whose value differs between the given configs, knobs only."""
    flats = [flatten(c) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    out = []
    for k in keys:
        if k in NOT_KNOB_KEYS or k.startswith(NOT_KNOB_PREFIXES):
            continue
        if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1:
            out.append(k)
    return out


def assign_labels(configs: list[dict]) -> list[tuple[str, tuple]]:
    """(label, sort key) per config. Knobs are the keys that vary between configs of the SAME strategy, so that
    a sweep over e.g. `ranking` labels its rows "DART 70% (ranking=max)", while the ten-benchmark table's rows
    stay "DART 70%" although GRIFFIN and DART differ in many strategy keys."""
    by_strategy: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        by_strategy.setdefault((c.get("strategy") or {}).get("name", "?"), []).append(i)
    out: list[tuple[str, tuple]] = [("", ())] * len(configs)
    for strategy, idx in by_strategy.items():
        knobs = varying_knobs([configs[i] for i in idx])
        for i in idx:
            flat = flatten(configs[i])
            sparsity = configs[i].get("sparsity")
            label = base_label(strategy, sparsity)
            if knobs:
                label += " (" + ", ".join(f"{short_key(k)}={fmt_value(flat.get(k))}" for k in knobs) + ")"
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


def _config_name(name: str) -> str:
    """The config name behind a display name or label ("Llama-3.1-8B shape, random, 2 layers" -> "llama3_8b")."""
    for key, shown in MODEL_NAMES.items():
        if name == shown or name.startswith(shown + " shape, random"):
            return key
    return name


def model_sort_key(name: str) -> tuple:
    """Models in the paper's order; config names and labels (`model_label`) alike."""
    key = _config_name(name)
    return (MODEL_ORDER.index(key) if key in MODEL_ORDER else len(MODEL_ORDER), name)
