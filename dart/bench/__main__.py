"""python -m dart.bench [model=...] [sparsities=[0.5,0.7]] [batch_sizes=[1,2,4,8]] [loops=[lean]] ...: see conf/bench.yaml."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dart.errors import DartError


def bench(cfg: DictConfig) -> dict:
    import os

    import torch
    from rich.progress import Progress

    from dart.bench.decode import LOOPS, MODES, batch_sizes, machine, measure, remask_demo, weight_bytes_per_token
    from dart.config_checks import check_sparsity
    from dart.errors import ConfigError, choice_error
    from dart.models.loading import load_model, resolve_device
    from dart.pipeline import _quiet_libraries

    for key, allowed in (("modes", MODES), ("loops", LOOPS), ("batch_loops", LOOPS)):
        for v in cfg.get(key) or []:
            if v not in allowed:
                raise choice_error(key, v, allowed)
    for s in cfg.sparsities:
        check_sparsity(s)
    try:
        sizes = batch_sizes(cfg)
    except (TypeError, ValueError):
        sizes = [0]
    if not sizes or any(b < 1 for b in sizes):
        raise ConfigError(f"batch_sizes={cfg.get('batch_sizes')} must be a list of positive integers, e.g. [1, 2, 4, 8]")
    from dart.bench.report import annotate, load_warning

    load_at_start = os.getloadavg()[0]  # before the model loads (loading itself raises the load)
    busy = load_warning(load_at_start, os.cpu_count())
    if busy:
        print(f"[dart] warning: {busy}", flush=True)
    _quiet_libraries()
    torch.manual_seed(int(cfg.seed))
    torch.set_grad_enabled(False)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    loaded = load_model(cfg.model, device=device, dtype=cfg.dtype)
    model = loaded.model
    info = machine()
    info["loadavg_1m"] = load_at_start
    per_loop = sum(1 if m == "dense" else len(cfg.sparsities) for m in cfg.modes)
    n_jobs = sum(per_loop * len(cfg.loops if b == 1 else (cfg.get("batch_loops") or cfg.loops)) for b in sizes)
    total = n_jobs * (int(cfg.warmup) + int(cfg.repeats))
    if sys.stdout.isatty():
        with Progress(transient=True) as bar:
            task = bar.add_task("decode bench", total=total)
            rows = measure(model, loaded.tokenizer, cfg, progress=lambda: bar.advance(task))
    else:  # nohup, SLURM, a pipe: a plain line every progress_s seconds instead of a bar nobody sees
        from dart.lit import PlainTicker

        ticker = PlainTicker("decode bench", total, float(cfg.get("progress_s", 30)))
        rows = measure(model, loaded.tokenizer, cfg, progress=ticker.step)
    res = {"config": {"model": cfg.model.name, "device": device, "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                      "batch_sizes": sizes, "union_max_keep": float(cfg.get("union_max_keep", 0.9)),
                      **{k: cfg[k] for k in ("prompt_tokens", "new_tokens", "warmup", "repeats")}},
           "machine": info, "weight_bytes": weight_bytes_per_token(model), "rows": rows,
           "model": loaded.info}
    if cfg.remask_demo and cfg.model.get("model_type") in ("llama", "mistral", "qwen2", "qwen3"):
        res["remask_demo"] = remask_demo(model, loaded.tokenizer, cfg, float(cfg.sparsities[0]))
    res["machine"]["loadavg_1m_end"] = os.getloadavg()[0]
    return annotate(res)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    from dart.bench.report import markdown, write

    try:
        res = bench(cfg)
    except DartError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    paths = write(res, Path(cfg.out))
    print(markdown(res))
    print(f"[dart] bench results: {paths['json']}, {paths['markdown']}, {paths['plot']}")


if __name__ == "__main__":
    main()
