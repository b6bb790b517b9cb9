"""What a reader calls a model: the display names of the model configs ("llama3_8b" -> "Llama-3.1-8B"), the label of
a run's model (random weights and local folders say so), and the order models are shown in. Used where a model is
loaded (dart.models.loading records the label in results.json) and where runs are shown (dart.tables, dart.report)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath

MODEL_ORDER = ("llama3_8b", "llama32_3b", "llama2_7b", "mistral_7b", "qwen3_4b", "llama32_3b_instruct",
               "smollm2_135m", "gemma3_270m", "qwen25_coder_1p5b")  # the paper's, then the embedded ones by size
MODEL_NAMES = {"llama3_8b": "Llama-3.1-8B", "llama32_3b": "Llama-3.2-3B", "llama2_7b": "Llama-2-7B",
               "mistral_7b": "Mistral-7B", "qwen3_4b": "Qwen3-4B", "llama32_3b_instruct": "Llama-3.2-3B-Instruct",
               "smollm2_135m": "SmolLM2-135M", "gemma3_270m": "Gemma3-270M",
               "qwen25_coder_1p5b": "Qwen2.5-Coder-1.5B-Instruct"}


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


SHORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}


def short_dtype(dtype: str) -> str:
    """How tables write a dtype: "bfloat16" -> "bf16"."""
    return SHORT_DTYPES.get(str(dtype), str(dtype))


def config_name(name: str) -> str:
    """The config name behind a display name or label ("Llama-3.1-8B shape, random, 2 layers" -> "llama3_8b")."""
    for key, shown in MODEL_NAMES.items():
        if name == shown or name.startswith(shown + " shape, random"):
            return key
    return name


def model_sort_key(name: str) -> tuple:
    """Models in the paper's order; config names and labels (`model_label`) alike."""
    key = config_name(name)
    return (MODEL_ORDER.index(key) if key in MODEL_ORDER else len(MODEL_ORDER), name)
