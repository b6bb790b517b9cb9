"""python -m dart.bench [model=...] [sparsities=[0.5,0.7]] [loops=[lean]] ...: see conf/bench.yaml."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from dart.errors import DartError


def bench(cfg: DictConfig) -> dict:
    import os

    import torch
    from rich.progress import Progress

    from dart.bench.decode import LOOPS, MODES, machine, measure, remask_demo, weight_bytes_per_token
    from dart.config_checks import check_sparsity
    from dart.errors import choice_error
    from dart.models.loading import load_model, resolve_device
    from dart.pipeline import _quiet_libraries

    for key, allowed in (("modes", MODES), ("loops", LOOPS)):
        for v in cfg[key]:
            if v not in allowed:
                raise choice_error(key, v, allowed)
    for s in cfg.sparsities:
        check_sparsity(s)
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
    n_jobs = sum(1 if m == "dense" else len(cfg.sparsities) for m in cfg.modes) * len(cfg.loops)
    with Progress(transient=True) as bar:
        task = bar.add_task("decode bench", total=n_jobs * (int(cfg.warmup) + int(cfg.repeats)))
        rows = measure(model, loaded.tokenizer, cfg, progress=lambda: bar.advance(task))
    res = {"config": {"model": cfg.model.name, "device": device, "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                      **{k: cfg[k] for k in ("batch_size", "prompt_tokens", "new_tokens", "warmup", "repeats")}},
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
