"""What every bench shares: one command-line style and one results writer.

Every bench is a Hydra app over `conf/` with its own config (`conf/bench.yaml` for `python -m dart.bench`,
`conf/bench_<name>.yaml` for `python -m dart.bench.<name>`), so every bench takes `key=value` overrides and the
same groups as a run (`model=...`; `strategy=...` and `ranking=...` where it runs one strategy), and writes into
its `out` folder (`hydra.run.dir` is `out`, no `.hydra` folder, no log files).

`run_bench(cfg, bench, outputs)` is each app's body: a bad value is one line (`error: ...`, exit 2), then
`write_results` writes the results JSON atomically, stamped with the machine (`machine()`, and the 1-minute load
average at the end) and the versions of the stack (`dart.runtime.versions()`), beside its markdown and plot.
Strategies are built only through `dart.compose.build_strategy` (`strategy_of` for a bench's `strategy` group).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Callable

from dart.errors import DartError


# ----------------------------------------------------------------------------- before the measurement
def machine() -> dict[str, Any]:
    """The machine a bench ran on, with its 1-minute load average now (the machine may be shared)."""
    import platform

    import torch

    from dart.runtime import cpu

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpu": cpu(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "loadavg_1m": os.getloadavg()[0]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def prepare(cfg, quiet: tuple[str, ...] = ()) -> None:
    """No library noise (dart.runtime.quiet_libraries, and the loggers `quiet` at ERROR), `cfg.seed`, no autograd,
    `cfg.threads` torch threads where set."""
    import logging

    import torch

    from dart.runtime import quiet_libraries

    quiet_libraries()
    for name in quiet:
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.manual_seed(int(cfg.get("seed") or 0))
    torch.set_grad_enabled(False)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))


def load(cfg):
    """(dart.models.loading.LoadedModel, device) of the bench's `model`, `device` and `dtype`."""
    from dart.models.loading import load_model, resolve_device

    device = resolve_device(cfg.device)
    return load_model(cfg.model, device=device, dtype=cfg.dtype), device


def dtype_name(model) -> str:
    from dart.models.precision import dtype_name as name

    return name(next(model.parameters()).dtype)


def strategy_of(cfg):
    """The strategy of a bench's `strategy` and `ranking` groups at its `sparsity`, built by
    dart.compose.build_strategy with the node's knobs (`strategy.<knob>=...` on the command line included)."""
    from omegaconf import OmegaConf

    from dart.compose import build_strategy

    node = OmegaConf.to_container(cfg.strategy, resolve=True)
    knobs = {k: v for k, v in node.items() if k not in ("_target_", "name", "sparsity", "ranking")}
    return build_strategy(cfg.strategy.name, sparsity=float(cfg.sparsity), ranking=cfg.ranking.name, **knobs)


def time_scoring(lm, model) -> list[float]:
    """Time spent inside `lm`'s loglikelihood path (tokenised requests to log-likelihoods: what a strategy and the
    batch size change), device-synchronised: a one-element list that grows with every call."""
    import time

    import torch

    inner, spent = lm._loglikelihood_tokens, [0.0]

    def sync():
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)

    def timed(*a, **kw):
        sync()
        t = time.perf_counter()
        out = inner(*a, **kw)
        sync()
        spent[0] += time.perf_counter() - t
        return out

    lm._loglikelihood_tokens = timed
    return spent


# ----------------------------------------------------------------------------- the results writer
@dataclasses.dataclass(frozen=True)
class Outputs:
    """The files a bench writes into its `out` folder: the results JSON (`json`, formatted with the result's
    top-level values, e.g. "{model}-{strategy}.json"), and where given a markdown table (`render(res)`, written to
    `markdown`, printed in any case) and a plot (`draw(res, path)`)."""

    json: str
    render: Callable[[dict], str] | None = None
    markdown: str | None = None
    plot: str | None = None
    draw: Callable[[dict, Path], Any] | None = None


def write_text_atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def stamp(res: dict[str, Any]) -> dict[str, Any]:
    """The machine (kept where the bench recorded it at the start) with its load average at the end, and the
    versions of the stack, in place."""
    from dart.runtime import versions

    info = res.setdefault("machine", machine())
    info.setdefault("loadavg_1m_end", os.getloadavg()[0])
    res.setdefault("versions", versions())
    return res


def write_results(out: Path, res: dict[str, Any], outputs: Outputs) -> dict[str, Path]:
    """Every bench's writer: the stamped results JSON (atomic, dart.results.write_json_atomic), the markdown and the
    plot; {"json": path, "markdown": path, "plot": path} for those written."""
    from dart.results import write_json_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json_atomic(out / outputs.json.format(**res), stamp(res))}
    if outputs.markdown and outputs.render:
        paths["markdown"] = write_text_atomic(out / outputs.markdown, outputs.render(res))
    if outputs.plot and outputs.draw:
        path = out / outputs.plot
        outputs.draw(res, path)  # may draw nothing (no rows to plot)
        if path.is_file():
            paths["plot"] = path
    return paths


def run_bench(cfg, bench: Callable[[Any], dict], outputs: Outputs, label: str) -> dict[str, Any]:
    """A bench app's body: `bench(cfg)` (a DartError is one line, `error: ...`, and exit code 2), its results
    written to `cfg.out`, its markdown printed, then one line naming the files."""
    try:
        res = bench(cfg)
        paths = write_results(Path(cfg.out), res, outputs)
    except DartError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if outputs.render:
        print(outputs.render(res))
    print(f"[dart] {label} results: {', '.join(str(p) for p in paths.values())}")
    return res
