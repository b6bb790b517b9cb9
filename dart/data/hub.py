"""Hugging Face data sets with a fast, clear failure where the hub cannot be reached (no 25 s of retries)."""
from __future__ import annotations

import os

from dart.errors import UnavailableError


def hub_reachable() -> str | None:
    """None if the hub answers, else why not (cached data sets still load when it does not)."""
    from dart.models.loading import _hub_reachable

    return _hub_reachable()


def load_hub_dataset(path: str, name: str | None, split: str, what: str):
    """datasets.load_dataset, offline-first when the hub is unreachable (then only the local cache serves)."""
    why = hub_reachable()
    if why:
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from datasets import load_dataset

        return load_dataset(path, name, split=split)
    except Exception as e:
        reason = why or f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        raise UnavailableError(f"{what} needs the Hugging Face data set {path}{'/' + name if name else ''} "
                               f"({split}), which is not cached and cannot be downloaded here ({reason})") from None
