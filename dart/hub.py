"""The Hugging Face hub, with a fast, clear answer where it cannot be reached (never 25 s of download retries): is
it reachable, is a model cached, and data sets loaded offline-first. Models (dart.models.loading), data sets
(dart.evals.summarization, dart.evals.harness) and `dart-lm-eval` ask here."""
from __future__ import annotations

import os
import socket

from dart.errors import UnavailableError


def hub_cached(repo_id: str) -> bool:
    """Whether the local hub cache holds `repo_id`'s config.json (then it loads without the hub)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
        return isinstance(found, str) and os.path.isfile(found)
    except Exception:
        return False


def hub_reachable(timeout: float = 3.0) -> str | None:
    """None if huggingface.co (or $HF_ENDPOINT) answers a TCP connect quickly, else the reason (cached models and
    data sets still load when it does not)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    host, _, port = endpoint.partition(":")
    try:
        with socket.create_connection((host, int(port or 443)), timeout=timeout):
            return None
    except OSError as e:
        return f"{host} unreachable: {e.strerror or e}"


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
