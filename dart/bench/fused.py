"""python -m dart.bench.fused: is a fused gate/up projection worth it for compacted decoding? A micro-benchmark of
one decode step's gated FFN input at a model's shapes: two matmuls on the kept prefix (gate[:k], up[:k]; what the
engine runs) against one matmul on an interleaved (2k, D) block (what a fused layout would run), batch 1, median
over repeats. Writes fused.json and fused.md into --out (default benchmarks/decode/fused/)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
SHAPES = {"smollm2_135m": (576, 1536, 30), "llama3_8b": (4096, 14336, 32)}


def _time(fn, reps: int) -> float:
    for _ in range(20):
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dart.bench.fused", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2_135m", choices=sorted(SHAPES))
    p.add_argument("--reps", type=int, default=2000)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "decode" / "fused")
    a = p.parse_args(argv)
    torch.set_grad_enabled(False)
    D, I, L = SHAPES[a.model]
    x = torch.randn(1, 1, D)
    rows = []
    load0 = os.getloadavg()[0]
    for sparsity in (0.0, 0.5, 0.7):
        k = int((1 - sparsity) * I)
        gate, up = torch.randn(I, D), torch.randn(I, D)
        gu = torch.stack([gate, up], dim=1).reshape(2 * I, D)  # row 2j = gate_j, 2j+1 = up_j: a prefix of 2k rows
        two = _time(lambda: F.silu(F.linear(x, gate[:k])) * F.linear(x, up[:k]), a.reps)

        def fused():
            z = F.linear(x, gu[: 2 * k]).view(1, 1, k, 2)
            return F.silu(z[..., 0]) * z[..., 1]
        one = _time(fused, a.reps)
        same = torch.allclose(fused(), F.silu(F.linear(x, gate[:k])) * F.linear(x, up[:k]), atol=1e-4)
        rows.append({"sparsity": sparsity, "k": k, "two_matmuls_us": 1e6 * two, "fused_us": 1e6 * one,
                     "saving_per_token_ms": L * (two - one) * 1e3, "same_values": bool(same)})
    res = {"model": a.model, "shape": {"hidden": D, "intermediate": I, "layers": L}, "threads": torch.get_num_threads(),
           "torch": torch.__version__, "loadavg_1m_before": round(load0, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2),
           "rows": rows}
    lines = [f"Fused gate/up, {a.model} shapes (D={D}, I={I}, {L} layers), batch 1, fp32, {res['threads']} threads, "
             f"median of {a.reps}; load {res['loadavg_1m_before']} before, {res['loadavg_1m_after']} after.", "",
             "| sparsity | kept k | gate + up (µs) | fused (µs) | saving per token (ms, all layers) |", "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['sparsity']:.1f} | {r['k']} | {r['two_matmuls_us']:.1f} | {r['fused_us']:.1f} | {r['saving_per_token_ms']:.2f} |")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "fused.json").write_text(json.dumps(res, indent=1) + "\n")
    (a.out / "fused.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
