"""python -m dart.bench.fused [model=llama3_8b] [reps=2000]: is a fused gate/up projection worth it for compacted
decoding? A micro-benchmark of one decode step's gated FFN input at a model's shapes (its config's hidden_size,
intermediate_size and num_layers; no weights load): two matmuls on the kept prefix (gate[:k], up[:k]; what the
engine runs) against one matmul on an interleaved (2k, D) block (what a fused layout would run), batch 1, median
over repeats. Writes fused.json and fused.md into `out` (default benchmarks/decode/fused/; conf/bench_fused.yaml)."""
from __future__ import annotations

import os
import statistics
import time

import hydra
from omegaconf import DictConfig

from dart.bench.common import Outputs, prepare, run_bench

SPARSITIES = (0.0, 0.5, 0.7)


def _time(fn, reps: int) -> float:
    for _ in range(20):
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def bench(cfg: DictConfig) -> dict:
    import torch
    import torch.nn.functional as F

    from dart.errors import ConfigError

    reps = int(cfg.reps)
    if reps < 1:
        raise ConfigError(f"reps={cfg.reps} must be a positive integer")
    prepare(cfg)
    D, I, L = (int(cfg.model[k]) for k in ("hidden_size", "intermediate_size", "num_layers"))
    x = torch.randn(1, 1, D)
    rows = []
    load0 = os.getloadavg()[0]
    for sparsity in SPARSITIES:
        k = int((1 - sparsity) * I)
        gate, up = torch.randn(I, D), torch.randn(I, D)
        gu = torch.stack([gate, up], dim=1).reshape(2 * I, D)  # row 2j = gate_j, 2j+1 = up_j: a prefix of 2k rows
        two = _time(lambda: F.silu(F.linear(x, gate[:k])) * F.linear(x, up[:k]), reps)

        def fused():
            z = F.linear(x, gu[: 2 * k]).view(1, 1, k, 2)
            return F.silu(z[..., 0]) * z[..., 1]
        one = _time(fused, reps)
        same = torch.allclose(fused(), F.silu(F.linear(x, gate[:k])) * F.linear(x, up[:k]), atol=1e-4)
        rows.append({"sparsity": sparsity, "k": k, "two_matmuls_us": 1e6 * two, "fused_us": 1e6 * one,
                     "saving_per_token_ms": L * (two - one) * 1e3, "same_values": bool(same)})
    return {"model": cfg.model.name, "shape": {"hidden": D, "intermediate": I, "layers": L}, "reps": reps,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "loadavg_1m_before": round(load0, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2), "rows": rows}


def markdown(res: dict) -> str:
    s = res["shape"]
    lines = [f"Fused gate/up, {res['model']} shapes (D={s['hidden']}, I={s['intermediate']}, {s['layers']} layers), "
             f"batch 1, fp32, {res['threads']} threads, median of {res.get('reps', '?')}; load {res['loadavg_1m_before']} "
             f"before, {res['loadavg_1m_after']} after.", "",
             "| sparsity | kept k | gate + up (µs) | fused (µs) | saving per token (ms, all layers) |", "|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['sparsity']:.1f} | {r['k']} | {r['two_matmuls_us']:.1f} | {r['fused_us']:.1f} | {r['saving_per_token_ms']:.2f} |")
    return "\n".join(lines) + "\n"


@hydra.main(version_base="1.3", config_path="../../conf", config_name="bench_fused")
def main(cfg: DictConfig) -> None:
    run_bench(cfg, bench, Outputs(json="fused.json", render=markdown, markdown="fused.md"), "bench.fused")


if __name__ == "__main__":
    main()
