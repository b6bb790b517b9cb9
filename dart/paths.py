"""Where the project keeps its caches (converted models, priors, tokenizers): $DART_CACHE, else
$XDG_CACHE_HOME/dart, else ~/.cache/dart."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    if os.environ.get("DART_CACHE"):
        return Path(os.environ["DART_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dart"


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
