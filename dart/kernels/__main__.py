"""`python -m dart.kernels [build]`: build the decode kernels for this machine (setup.sh runs it) and say what they
are; exit status 0 either way (without a compiler the project runs without them)."""
from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv and argv[0] not in ("build", "info"):
        print(f"error: unknown command {argv[0]!r}; allowed: build, info", file=sys.stderr)
        return 2
    from dart import kernels
    from dart.kernels.build import log

    got = kernels.info()
    if got["available"]:
        log(f"decode kernels: {got['isa']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
