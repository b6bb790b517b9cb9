"""python -m dart.bench [model=...] [sparsities=[0.5,0.7]] [batch_sizes=[1,2,4,8]] [loops=[lean]] ...: see conf/bench.yaml."""
from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig

from dart.bench import report
from dart.bench.common import Outputs, dtype_name, load, machine, prepare, run_bench
from dart.progress import progress

OUTPUTS = Outputs(json="bench.json", render=report.markdown, markdown="bench.md", plot="speedup.png", draw=report.plot)


def check(cfg: DictConfig) -> list[int]:
    """Every value checked before the model loads; the batch sizes."""
    from dart.bench.decode import LOOPS, MODES, batch_sizes
    from dart.bench.methods import check_method
    from dart.config_checks import check_sparsity
    from dart.errors import ConfigError, choice_error

    for key, allowed in (("modes", MODES), ("loops", LOOPS), ("batch_loops", LOOPS)):
        for v in cfg.get(key) or []:
            if v not in allowed:
                raise choice_error(key, v, allowed)
    for key, per_token in (("sparse_methods", True), ("compact_methods", False)):
        for v in cfg.get(key) or []:
            check_method(key, v, per_token)
    for s in cfg.sparsities:
        check_sparsity(s)
    try:
        sizes = batch_sizes(cfg)
    except (TypeError, ValueError):
        sizes = [0]
    if not sizes or any(b < 1 for b in sizes):
        raise ConfigError(f"batch_sizes={cfg.get('batch_sizes')} must be a list of positive integers, e.g. [1, 2, 4, 8]")
    return sizes


def bench(cfg: DictConfig) -> dict:
    from dart.bench.decode import configs, measure, remask_demo, weight_bytes_per_token

    sizes = check(cfg)
    load_at_start = os.getloadavg()[0]  # before the model loads (loading itself raises the load)
    busy = report.load_warning(load_at_start, os.cpu_count())
    if busy:
        print(f"[dart] warning: {busy}", flush=True)
    prepare(cfg)
    loaded, device = load(cfg)
    model = loaded.model
    info = machine()
    info["loadavg_1m"] = load_at_start
    n_jobs = sum(len(configs(cfg, b, list(cfg.loops if b == 1 else (cfg.get("batch_loops") or cfg.loops)))) for b in sizes)
    from dart import kernels

    with progress("decode bench", n_jobs * (int(cfg.warmup) + int(cfg.repeats)), float(cfg.get("progress_s", 30))) as step:
        rows, bandwidth = measure(model, loaded.tokenizer, cfg, progress=step)
    res = {"config": {"model": cfg.model.name, "device": device, "dtype": dtype_name(model),
                      "batch_sizes": sizes, "union_max_keep": float(cfg.get("union_max_keep", 0.9)),
                      "sparse_methods": list(cfg.get("sparse_methods") or []),
                      **{k: cfg[k] for k in ("prompt_tokens", "new_tokens", "warmup", "repeats")}},
           "machine": info, "weight_bytes": weight_bytes_per_token(model), "rows": rows,
           "model": loaded.info, "kernels": kernels.info()}
    if bandwidth:
        import statistics

        per = [b["read_gb_s"] for b in bandwidth]
        res["bandwidth"] = {"read_gb_s": statistics.median(per), "per_repeat": per, "passes": bandwidth}
    if cfg.remask_demo and cfg.model.get("model_type") in ("llama", "mistral", "qwen2", "qwen3"):
        res["remask_demo"] = remask_demo(model, loaded.tokenizer, cfg, float(cfg.sparsities[0]))
    res["machine"]["loadavg_1m_end"] = os.getloadavg()[0]
    return report.annotate(res)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    run_bench(cfg, bench, OUTPUTS, "bench")


if __name__ == "__main__":
    main()
