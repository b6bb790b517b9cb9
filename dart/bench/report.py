"""Outputs of python -m dart.bench (bench.json through dart.bench.common.write_results): the busy-machine warning
and share flags, a markdown table and a plot of speed-up against sparsity (batch 1) and against batch size (the
union of the rows' masks), each with its bytes-bound limit."""
from __future__ import annotations

from pathlib import Path
from typing import Any

LOAD_PER_CORE_MAX = 0.5  # 1-minute load average per core above which timings on this machine are not trusted
SHARE_FLAG = ("share of the bytes-bound limit above 100%: a measurement error (timing noise, or bytes the count "
              "misses), not a speed-up beyond the limit")


def _fmt(v, spec=".2f", missing="–"):
    return missing if v is None else format(v, spec)


def load_warning(loadavg_1m: float | None, cpu_count: int | None, per_core_max: float = LOAD_PER_CORE_MAX) -> str | None:
    """A one-line warning when the machine was busy as the bench started (load per core above `per_core_max`)."""
    if loadavg_1m is None or not cpu_count:
        return None
    per_core = loadavg_1m / cpu_count
    if per_core <= per_core_max:
        return None
    return (f"the machine was busy at the start: 1-minute load average {loadavg_1m:.2f} on {cpu_count} cores "
            f"({per_core:.2f} per core, above {per_core_max}); other processes share the CPU and the timings are noisy")


def flag_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark each batch-1 row whose share of the bytes-bound limit is above 100% (`flag`): that is a measurement
    error, not a result. Returns the flagged rows. (A batch's step also spends compute that grows with the batch,
    and the union removes FFN compute as well as bytes, so above 100% there is possible: not flagged.)"""
    flagged = []
    for r in rows:
        share = r.get("share_of_limit")
        if share is not None and share > 1.0 and r.get("batch", 1) == 1:
            r["flag"] = SHARE_FLAG
            flagged.append(r)
        else:
            r.pop("flag", None)
    return flagged


def annotate(res: dict[str, Any]) -> dict[str, Any]:
    """Add the load warning and the share flags to a bench result (in place): `warnings` lists both."""
    m = res.get("machine") or {}
    warnings = []
    lw = load_warning(m.get("loadavg_1m"), m.get("cpu_count"))
    if lw:
        m["load_warning"] = lw
        warnings.append(lw)
    flagged = flag_rows(res.get("rows") or [])
    if flagged:
        warnings.append(f"{len(flagged)} row(s) flagged (!): {SHARE_FLAG}")
    res["warnings"] = warnings
    return res


def _share(r: dict[str, Any]) -> str:
    share = r.get("share_of_limit")
    text = f"{_fmt(share and 100 * share, '.0f')}%"
    return text + " (!)" if r.get("flag") else text


def _speedup(r: dict[str, Any]) -> str:
    ci = r.get("speedup_ci")
    text = f"{_fmt(r.get('speedup'))}x"
    return text + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and r.get("mode") != "dense" else "")


def _batches(res: dict[str, Any]) -> list[int]:
    c = res["config"]
    return [int(b) for b in (c.get("batch_sizes") or [c.get("batch_size", 1)])]


def markdown(res: dict[str, Any]) -> str:
    m, c = res["machine"], res["config"]
    sizes = _batches(res)
    batch = f"batch {sizes[0]}" if len(sizes) == 1 else f"batch sizes {', '.join(map(str, sizes))}"
    lines = [
        f"Model `{c['model']}` ({c['dtype']}, {c['device']}), {batch}, {c['prompt_tokens']}-token "
        f"prompt{'s (row b starts at news article b)' if len(sizes) > 1 else ''}, {c['new_tokens']} new tokens, "
        f"{c['repeats']} repeats after {c['warmup']} warm-up, the modes interleaved within each repeat; speed-up: the "
        "median of the per-repeat paired ratios against dense of the same repeat [bootstrap 95% interval]. "
        f"Machine: {m['processor']}, {m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads)"
        + (f", {m['gpu']}" if m.get("gpu") else "") + f", load {m['loadavg_1m']:.2f} at start"
        + (f", {m['loadavg_1m_end']:.2f} at the end" if m.get("loadavg_1m_end") is not None else "") + ".",
        "",
    ]
    bw = res.get("bandwidth")
    if bw:
        k = res.get("kernels") or {}
        lines += [f"Streaming read bandwidth, measured before every timed generation: {bw['read_gb_s']:.1f} GB/s "
                  f"(median; range {min(bw['per_repeat']):.1f}-{max(bw['per_repeat']):.1f}). Decode kernels: "
                  + (k.get("isa") or f"off ({k.get('reason')})") + ". `weight GB/s`: the weight bytes a decode step "
                  "reads times steps per second; `of bandwidth`: the median over its generations of that against "
                  "the bandwidth measured right before each.", ""]
    lines += [
        "| batch | loop | mode | method | sparsity | kept | tok/s | weight GB/s | of bandwidth | speed-up | bytes-bound limit | share of limit | prefill ms | re-mask ms | agreement with dense |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    default_batch = sizes[0] if len(sizes) == 1 else 1
    for r in res["rows"]:
        keep = r.get("union_keep") if r["mode"] != "dense" else None
        share_bw = r.get("share_of_bandwidth")
        lines.append(
            f"| {r.get('batch', default_batch)} | {r['loop']} | {r['mode']} | {r.get('method', '')} | "
            f"{r['sparsity']:.2f} | {_fmt(keep)} | {r['tokens_per_s']:.1f} | {_fmt(r.get('weight_gb_s'), '.1f')} | "
            f"{_fmt(share_bw and 100 * share_bw, '.0f')}% | {_speedup(r)} | "
            f"{r['bytes_bound_limit']:.2f}x | {_share(r)} | "
            f"{r['prefill_ms']:.0f} | {r['remask_ms']:.1f} | {_fmt(r.get('token_agreement_with_dense'))} |")
    if any(r["mode"] == "sparse" for r in res["rows"]):
        lines += ["", "`sparse`: a per-token method (the prompt dense, every decode step its own inputs) on the sparse-"
                      "input kernels; `kept` is 1 minus its measured effective sparsity (the FFN weight reads it "
                      "skipped over the decode steps), from which its bytes-bound limit follows."]
    if any(r.get("flag") for r in res["rows"]):
        lines += ["", f"(!) {SHARE_FLAG}."]
    if (res.get("machine") or {}).get("load_warning"):
        lines += ["", f"Warning: {res['machine']['load_warning']}."]
    if len(sizes) > 1:
        lines += ["", "Union keep: the fraction of FFN neurons kept by at least one row of the batch (mean over layers); "
                      "a batch reads that fraction of the FFN weights per step, so the bytes-bound limit of `union` is "
                      "dense bytes / union-compacted bytes (a share above 100% there means the step is partly "
                      "compute-bound: the union removes FFN compute too). `auto_execution` in the JSON says whether "
                      f"execution=auto would run the union (union keep <= union_max_keep = {c.get('union_max_keep', 0.9)}) "
                      "or masked. `shared`: strategy.batch_mask=shared, one kept set for the batch (the top-k of the "
                      "rows' normalised scores, the per-row count): one compacted prefix, no per-row mask, so its "
                      "bytes-bound limit is batch 1's."]
    hf = [r for r in res["rows"] if r["loop"] == "hf" and r["mode"] == "dense" and r.get("batch", 1) == 1]
    if hf:
        lines += ["", f"transformers `generate` dense: {hf[0]['tokens_per_s']:.1f} tok/s; every row's "
                      "`speedup_vs_hf_dense` is in the JSON."]
    d = res.get("remask_demo")
    if d:
        lines += ["", f"DART re-trace cost on the two-topic drift prompt (compacted, sparsity {d['sparsity']}, "
                      f"m={d['masking_step']}): {d['triggers']} re-traces in {d['new_tokens']} tokens, "
                      f"{1e3 * d['remask_s']:.1f} ms of mask building and compaction in {d['decode_s']:.2f} s of "
                      f"decoding = {100 * d['remask_share']:.2f}% of decode time ({d['tokens_per_s']:.1f} tok/s)."]
    for note in res.get("notes") or []:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    """Left: speed-up against sparsity at batch 1, with the bytes-bound limit. Right (several batch sizes):
    speed-up against batch size per sparsity, compacted/union and masked, with each batch's union bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sizes = _batches(res)
    rows = [r for r in res["rows"] if r.get("batch", sizes[0] if len(sizes) == 1 else 1) == sizes[0]]
    multi = len(sizes) > 1
    fig, axes = plt.subplots(1, 2 if multi else 1, figsize=(11 if multi else 6, 4))
    ax = axes[0] if multi else axes
    for loop in dict.fromkeys(r["loop"] for r in rows):
        for mode, method in dict.fromkeys((r["mode"], r.get("method") or "static_prompt") for r in rows
                                          if r["mode"] != "dense"):
            pts = sorted((r["sparsity"], r["speedup"]) for r in rows
                         if r["loop"] == loop and r["mode"] == mode and (r.get("method") or "static_prompt") == method
                         and r["speedup"])
            if pts:  # static_prompt's rows are named by their execution; every other method by its name
                label = f"{mode} ({loop} loop)" if method == "static_prompt" else f"{method} ({loop} loop)"
                ax.plot([0.0] + [p[0] for p in pts], [1.0] + [p[1] for p in pts], marker="^" if mode == "sparse" else "o",
                        linestyle=":" if mode == "masked" else ("-." if mode == "sparse" else "-"), label=label)
    s = np.linspace(0, 0.9, 50)
    dense, ffn = res["weight_bytes"]["dense"], res["weight_bytes"]["ffn"]
    ax.plot(s, dense / (dense - ffn * s), "k--", label="bytes-bound limit")
    ax.axhline(1.0, color="grey", linewidth=0.5)
    ax.set_xlabel("FFN sparsity")
    ax.set_ylabel("decode speed-up over dense")
    ax.set_title(f"{res['config']['model']} ({res['config']['device']}, {res['config']['dtype']}, batch {sizes[0]})")
    ax.legend(fontsize=8)
    if multi:
        ax = axes[1]
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        sparsities = sorted({r["sparsity"] for r in res["rows"] if r["mode"] != "dense"})
        for i, sp in enumerate(sparsities):
            col = colours[i % len(colours)]
            fast = sorted((r["batch"], r["speedup"], r["bytes_bound_limit"]) for r in res["rows"]
                          if r["loop"] == "lean" and r["mode"] in ("compacted", "union") and r["sparsity"] == sp)
            shared = sorted((r["batch"], r["speedup"]) for r in res["rows"]
                            if r["loop"] == "lean" and r["mode"] in ("compacted", "shared") and r["sparsity"] == sp
                            and (r["mode"] == "shared" or r["batch"] == 1))
            slow = sorted((r["batch"], r["speedup"]) for r in res["rows"]
                          if r["loop"] == "lean" and r["mode"] == "masked" and r["sparsity"] == sp)
            if fast:
                ax.plot([p[0] for p in fast], [p[1] for p in fast], "o-", color=col, label=f"compacted / union, {sp:.0%}")
                ax.plot([p[0] for p in fast], [p[2] for p in fast], "--", color=col, label=f"bytes bound of the union, {sp:.0%}")
            if slow:
                ax.plot([p[0] for p in slow], [p[1] for p in slow], ":", marker="x", color=col, label=f"masked, {sp:.0%}")
            if len(shared) > 1:
                ax.plot([p[0] for p in shared], [p[1] for p in shared], "-.", marker="s", color=col,
                        label=f"shared mask, {sp:.0%}")
        ax.axhline(1.0, color="grey", linewidth=0.5)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(b) for b in sizes])
        ax.set_xlabel("batch size (rows on different news stories)")
        ax.set_ylabel("decode speed-up over dense at the same batch")
        ax.set_title("lean loop: speed-up against batch size")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
