"""`python -m dart.assets prepare`: fetch-free preparation of everything the offline runs need (the embedded
model converted into the cache, the offline texts located). Called by setup.sh; idempotent."""
from __future__ import annotations

import sys


def prepare() -> None:
    from dart.data.gensim_data import gensim_test_data
    from dart.models.embedded import prepare as prepare_model

    gensim_test_data()
    path = prepare_model("smollm2_135m")
    print(f"[setup] embedded model ready: {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["prepare"]:
        print("usage: python -m dart.assets prepare", file=sys.stderr)
        return 2
    from dart.errors import exit_status

    return exit_status(prepare, code=1)


if __name__ == "__main__":
    sys.exit(main())
