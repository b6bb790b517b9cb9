"""python -m dart.bench.profile: where a batch-1 decode step's time goes, and what the bytes-bound limit becomes
once the time that does not scale with bytes is counted (conf/bench_profile.yaml).

The bytes-bound limit of compacted decoding (dart.bench.decode) assumes the whole step is memory-bound: its time
proportional to the weight bytes it reads, so pruning a fraction p of the FFN's bytes removes the same fraction of
their time. On a small model on a CPU a step also pays per-op costs that do not scale with bytes (Python and
dispatch, norms, attention over the cache, the output head). Here the lean loop times every FFN call of every decode
step (`LeanDecoder(time_ffn=True)`), so a step splits into T_ffn and T_rest; dense and each compacted sparsity are
interleaved within each repeat. Reported per row (medians over the repeats): ms per step, of them in the FFN and
elsewhere; the bytes-bound limit; the measured speed-up; the overhead-aware limit T_dense / (T_rest_dense +
kept * T_ffn_dense), i.e. the FFN's time scaling exactly with its kept bytes and the rest of the step as measured;
the FFN's own share of its bytes bound, kept * T_ffn_dense / T_ffn; the FFN's weight GB/s; and how the rest of the
step moved. `sparse_methods` adds per-token methods on the sparse-input kernels (kept: 1 minus their measured
effective sparsity)."""
from __future__ import annotations

import os
import statistics
import time

import hydra
from omegaconf import DictConfig

from dart.bench.common import Outputs, dtype_name, load, machine, prepare, run_bench


def bench(cfg: DictConfig) -> dict:
    import torch

    from dart.bench.decode import prompt_ids, weight_bytes_per_token
    from dart.bench.methods import bench_strategy
    from dart.config_checks import check_sparsity
    from dart.bench.lean import LeanDecoder
    from dart.stats import paired_ratio

    from dart.bench.decode import SPARSE_METHODS
    from dart.errors import choice_error

    for s in cfg.sparsities:
        check_sparsity(s)
    for m in cfg.get("sparse_methods") or []:
        if m not in SPARSE_METHODS:
            raise choice_error("sparse_methods", m, SPARSE_METHODS)
    prepare(cfg)
    loaded, device = load(cfg)
    model, tok = loaded.model, loaded.tokenizer
    info = machine()
    ids = prompt_ids(tok, 1, int(cfg.prompt_tokens), device)
    new, steps = int(cfg.new_tokens), int(cfg.new_tokens) - 1
    keys = [("dense", 0.0, "dense")] + [("compacted", float(s), "static_prompt") for s in cfg.sparsities] + [
        ("sparse", float(s), m) for m in (cfg.get("sparse_methods") or []) for s in cfg.sparsities]
    runs = {k: {"step": [], "ffn": []} for k in keys}
    made, effective = {}, {}  # per-token strategies: calibrated once, attached for every repeat; their effective
    for rep in range(int(cfg.warmup) + int(cfg.repeats)):
        for mode, sp, method in keys:
            strat = made.setdefault((sp, method), bench_strategy(mode, sp, method)) if mode == "sparse" else \
                bench_strategy(mode, sp, method)
            if strat is not None:
                strat.attach(model, tok)
                if getattr(strat, "engine", None) is not None:
                    strat.engine.lay_out()
            try:
                dec = LeanDecoder(model, ids.shape[1] + new, 1, getattr(strat, "controller", None), time_ffn=True,
                                  per_token=getattr(strat, "engine", None))
                tok0 = dec.forward(ids, 0)[:, -1].argmax(-1, keepdim=True)  # the prefill (and the mask build)
                dec.ffn_seconds, pos = 0.0, ids.shape[1]
                t0 = time.perf_counter()
                for _ in range(steps):
                    tok0 = dec.forward(tok0, pos)[:, -1].argmax(-1, keepdim=True)
                    pos += 1
                total = time.perf_counter() - t0
            finally:
                if strat is not None:
                    strat.detach()
            if rep >= int(cfg.warmup):
                runs[mode, sp, method]["step"].append(1e3 * total / steps)
                runs[mode, sp, method]["ffn"].append(1e3 * dec.ffn_seconds / steps)
                if mode == "sparse":
                    effective[sp, method] = float(strat.summary()["sparsity"]["effective"])
    med = {k: {q: statistics.median(v[q]) for q in ("step", "ffn")} for k, v in runs.items()}
    d = med["dense", 0.0, "dense"]
    rest_dense = d["step"] - d["ffn"]
    rows = []
    for (mode, sp, method), m in med.items():
        kept = 1.0 - (effective[sp, method] if mode == "sparse" else sp)  # a per-token method: what it skipped
        wb = weight_bytes_per_token(model, kept)
        rest = m["step"] - m["ffn"]
        speedup, ratios, ci = paired_ratio(runs["dense", 0.0, "dense"]["step"], runs[mode, sp, method]["step"])
        aware = d["step"] / (rest_dense + kept * d["ffn"])
        rows.append({"mode": mode, "method": method, "sparsity": sp, "ms_per_step": m["step"], "ffn_ms": m["ffn"], "rest_ms": rest,
                     "ffn_share_of_step": m["ffn"] / m["step"], "ffn_bytes_share": wb["ffn"] * kept / wb["pruned"],
                     "bytes_bound_limit": wb["limit"], "speedup": speedup, "speedup_all": ratios,
                     "speedup_ci": list(ci) if ci else None, "share_of_bytes_bound": speedup / wb["limit"],
                     "overhead_aware_limit": aware, "share_of_overhead_aware_limit": speedup / aware,
                     "ffn_share_of_its_bound": kept * d["ffn"] / m["ffn"] if m["ffn"] else None,
                     "rest_vs_dense": rest / rest_dense, "ms_per_step_all": runs[mode, sp, method]["step"],
                     "ffn_ms_all": runs[mode, sp, method]["ffn"], "ffn_gb_s": wb["ffn"] * kept / m["ffn"] / 1e6})
    info["loadavg_1m_end"] = os.getloadavg()[0]
    return {"config": {"model": cfg.model.name, "device": device, "dtype": dtype_name(model),
                       "prompt_tokens": int(cfg.prompt_tokens), "new_tokens": new, "warmup": int(cfg.warmup),
                       "repeats": int(cfg.repeats)},
            "machine": info, "weight_bytes": weight_bytes_per_token(model), "rows": rows}


def markdown(res: dict) -> str:
    c, m = res["config"], res["machine"]
    lines = [f"Where a batch-1 decode step goes: `{c['model']}` ({c['dtype']}, {c['device']}), lean loop, "
             f"{c['prompt_tokens']}-token prompt, {c['new_tokens']} new tokens, {c['repeats']} interleaved repeats "
             f"(medians). Machine: {m['processor']}, {m['cpu_count']} cores, torch {m['torch']} "
             f"({m['torch_threads']} threads), load {m['loadavg_1m']:.2f} at start, {m.get('loadavg_1m_end', 0):.2f} "
             "at the end.", "",
             "| mode | method | sparsity | ms / step | FFN ms | FFN GB/s | rest ms | FFN share of step | FFN share of bytes | "
             "speed-up | bytes-bound limit | share | overhead-aware limit | share | FFN vs its bound | rest vs dense |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['mode']} | {r.get('method', '')} | {r['sparsity']:.2f} | {r['ms_per_step']:.1f} | "
                     f"{r['ffn_ms']:.1f} | {r.get('ffn_gb_s', 0):.1f} | "
                     f"{r['rest_ms']:.1f} | {100 * r['ffn_share_of_step']:.0f}% | {100 * r['ffn_bytes_share']:.0f}% | "
                     f"{r['speedup']:.2f}x | {r['bytes_bound_limit']:.2f}x | {100 * r['share_of_bytes_bound']:.0f}% | "
                     f"{r['overhead_aware_limit']:.2f}x | {100 * r['share_of_overhead_aware_limit']:.0f}% | "
                     f"{100 * (r['ffn_share_of_its_bound'] or 0):.0f}% | {r['rest_vs_dense']:.2f} |")
    lines += ["", "FFN share of bytes: the FFN's share of the weight bytes a step reads. Overhead-aware limit: the "
              "dense step time over (the rest of the dense step + the kept fraction of its FFN time), i.e. the "
              "speed-up if the FFN's time scaled exactly with its kept bytes while everything else stayed as "
              "measured. FFN vs its bound: the kept fraction of the dense FFN time over the compacted FFN time."]
    return "\n".join(lines) + "\n"


OUTPUTS = Outputs(json="profile.json", render=markdown, markdown="profile.md")


@hydra.main(version_base="1.3", config_path="../../conf", config_name="bench_profile")
def main(cfg: DictConfig) -> None:
    run_bench(cfg, bench, OUTPUTS, "bench.profile")


if __name__ == "__main__":
    main()
