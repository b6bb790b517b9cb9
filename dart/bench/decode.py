"""Decode-throughput measurement: dense, masked, compacted and per-token sparse FFN execution on one model, at several
batch sizes, beside the machine's streaming read bandwidth measured in the same run.

For each (batch size, loop, mode, sparsity): `warmup` + `repeats` greedy generations of `new_tokens` from the
same prompts; the prefill and the decode steps are timed apart (device-synchronised only at those two boundaries),
and the median decode rate over the repeats is reported. The masks come from the engine exactly as in a run of
strategy=static_prompt: the prompt is traced, the mask is built at the first decode step (masking_step 1) and,
for `compacted`, every layer's kept neurons are moved into a contiguous prefix that alone runs from then on. At
batch > 1 (row b's prompt starts at news article b: every row a different story, so the masks differ) compacted
execution runs the UNION of the rows' kept neurons, each row masked inside it (dart.engine.union): mode `union`,
with the union's size (`union_keep`, mean over layers) and whether execution=auto would run it
(`auto_execution`). The time the engine spends building masks and compacting is reported as `remask_ms` (it is
inside the decode time, as in real use). Mode `sparse` runs each per-token method of `sparse_methods` (TEAL, WINA,
CATS) at each sparsity on its sparse-input kernels (weights laid out K-major before timing). Loops: `lean`
(dart.bench.lean, its products on the decode kernels where they are built), `lean_torch` (the same loop on torch's
products), `hf` (model.generate inside dart.kernels.decoding) and `compiled` (the lean loop with torch.compile'd
steady steps, torch's products; its warm-up generation compiles).

Bandwidth: right before each timed generation the machine's streaming read bandwidth is measured (dart.bench.bandwidth:
it moves with the host's other tenants, by up to 2x within a minute on a shared VM); each row reports the weight
bytes it streams per second and its share of the bandwidth measured before each of its generations (the median of
those paired ratios).

Bytes-bound limit: decoding one token reads every weight once (the output head included, the input embedding
only as one row), so dense/pruned weight bytes bounds the speed-up a memory-bound decoder can get; for a batch the
pruned bytes are the union's (`bound`: dense bytes over the bytes the row's execution reads, 1 for dense and
masked).
"""
from __future__ import annotations

import os
import resource
import statistics
import time
from typing import Any

import torch

from dart.bench.lean import LeanDecoder
from dart.bench.methods import bench_strategy
from dart.compose import build_strategy
from dart.engine.overhead import state_bytes

MODES = ("dense", "masked", "compacted", "shared", "sparse")  # compacted at batch > 1: the rows' union (mode "union");
# shared: one kept set for the batch (batch > 1 only); sparse: the per-token methods of `sparse_methods`
LOOPS = ("lean", "lean_torch", "hf", "compiled")  # compiled: the lean loop with its steady steps through torch.compile
SPARSE_METHODS = ("teal", "wina", "cats")
COMPACT_METHODS = ("static_prompt",)  # mode compacted's whole-sequence methods, by default


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def weight_bytes_per_token(model, ffn_kept: float = 1.0, attn_kept: float = 1.0) -> dict[str, float]:
    """Weight bytes one decode step reads: dense, and with a fraction ffn_kept of every FFN's weights (and attn_kept
    of the attention projections', for TEAL as published)."""
    from dart.engine.adapters import adapter_for

    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    params = list({p.data_ptr(): p for p in model.parameters()}.values())
    total = sum(p.numel() * p.element_size() for p in params)
    emb_bytes = emb.numel() * emb.element_size()
    tied = head is not None and head.weight.data_ptr() == emb.data_ptr()
    dense = total - emb_bytes + (emb_bytes if tied else 0)  # a lookup reads one row; a tied head reads it all
    ad = adapter_for(model)
    ffn = 0
    for layer in ad.layers(model):
        mod = ad.ffn(layer)
        mod = getattr(mod, "original", mod)
        ffn += sum(p.numel() * p.element_size() for p in mod.parameters() if p.dim() == 2)
    attn = 0
    if attn_kept < 1.0:
        for layer in ad.layers(model):
            attn += sum(p.numel() * p.element_size() for p in ad.attention(layer).parameters() if p.dim() == 2)
    pruned = dense - ffn * (1.0 - ffn_kept) - attn * (1.0 - attn_kept)
    return {"dense": float(dense), "ffn": float(ffn), "pruned": float(pruned), "limit": dense / pruned}


def prompt_ids(tokenizer, batch: int, tokens: int, device) -> torch.Tensor:
    """`batch` prompts of exactly `tokens` tokens, from consecutive real news articles."""
    from dart.data.texts import news_articles

    arts = news_articles()
    rows = []
    for b in range(batch):
        text = " ".join(arts[b:b + 8])  # enough text for any prompt length we use
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
        if len(ids) < tokens:
            raise ValueError(f"prompt_tokens={tokens} is longer than the news text used for prompts ({len(ids)})")
        rows.append(ids)
    return torch.tensor(rows, device=device)


def row_mode(mode: str, batch: int) -> str:
    """The mode a row reports: compacted execution of a batch is its rows' union."""
    return "union" if mode == "compacted" and batch > 1 else mode


def _generate_lean(dec: LeanDecoder, ids: torch.Tensor, new: int, device) -> tuple[float, float, torch.Tensor]:
    sync(device)
    t0 = time.perf_counter()
    tok = dec.forward(ids, 0)[:, -1].argmax(-1, keepdim=True)
    sync(device)
    t1 = time.perf_counter()
    out, pos = [tok], ids.shape[1]
    for _ in range(new - 1):
        tok = dec.forward(tok, pos)[:, -1].argmax(-1, keepdim=True)
        out.append(tok)
        pos += 1
    sync(device)
    return t1 - t0, time.perf_counter() - t1, torch.cat(out, dim=1)


def _generate_hf(model, ids: torch.Tensor, new: int, pad: int, device) -> tuple[float, float, torch.Tensor]:
    from dart import kernels

    kw = dict(do_sample=False, attention_mask=torch.ones_like(ids), pad_token_id=pad)
    sync(device)
    with kernels.decoding(model):  # what dart.prune + generate runs
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)  # prefill and the first token
        sync(device)
        t1 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
        sync(device)
    total = time.perf_counter() - t1
    return t1 - t0, max(total - (t1 - t0), 1e-9), out[:, ids.shape[1]:]


def peak_memory(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20}
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # process peak so far


def batch_sizes(cfg) -> list[int]:
    sizes = cfg.get("batch_sizes") or [cfg.get("batch_size", 1)]
    return [int(b) for b in sizes]


def measure(model, tokenizer, cfg, progress=None) -> tuple[list[dict[str, Any]], list[dict[str, float]]]:
    """(rows, the bandwidth measured at the start of every timed repeat)."""
    device = next(model.parameters()).device
    rows, bandwidth = [], []
    for B in batch_sizes(cfg):
        loops = list(cfg.loops) if B == 1 else list(cfg.get("batch_loops") or cfg.loops)
        got, bw = measure_batch(model, tokenizer, cfg, B, loops, device, progress)
        rows += got
        bandwidth += bw
    return rows, bandwidth


def sparse_methods(cfg) -> list[str]:
    return list(cfg.get("sparse_methods") or SPARSE_METHODS)


def compact_methods(cfg) -> list[str]:
    return list(cfg.get("compact_methods") or COMPACT_METHODS)


def configs(cfg, B: int, loops: list[str]) -> list[tuple[str, str, float, str]]:
    """(loop, mode, sparsity, method) of one batch size (shared is a batch's mode: at batch 1 it is `compacted`;
    sparse: one per per-token method, at batch 1, not in the compiled loop)."""
    out = []
    for loop in loops:
        for mode in cfg.modes:
            if (mode == "shared" and B == 1) or (mode == "sparse" and (loop == "compiled" or B > 1)):
                continue
            methods = (["dense"] if mode == "dense" else sparse_methods(cfg) if mode == "sparse"
                       else compact_methods(cfg) if mode == "compacted" and B == 1 else ["static_prompt"])
            out += [(loop, mode, float(sp), m) for m in methods for sp in ([0.0] if mode == "dense" else cfg.sparsities)]
    return out


class _Run:
    """One (loop, mode, sparsity, method): its strategy attached for one generation (or, compiled, for all of them);
    a per-token method's strategy is made once (its calibration) and attached again for every generation."""

    def __init__(self, model, tokenizer, key, ids, new: int, pad: int, device):
        self.model, self.tokenizer, self.key, self.ids, self.new, self.pad, self.device = model, tokenizer, key, ids, new, pad, device
        self.prefill, self.decode, self.remask, self.tokens, self.info = [], [], [], None, {}
        self.bw = []  # the read bandwidth measured right before each timed generation
        self.strat = self.dec = self.made = None

    def attach(self) -> None:
        from dart import kernels

        loop, mode, sp, method = self.key
        if mode == "sparse":
            self.made = self.made or bench_strategy(mode, sp, method)
            self.strat = self.made
        else:
            self.strat = bench_strategy(mode, sp, method)
        if self.strat is not None:
            self.strat.attach(self.model, self.tokenizer)
        ctrl = getattr(self.strat, "controller", None)
        engine = getattr(self.strat, "engine", None)
        if engine is not None and loop != "lean_torch" and kernels.available():
            engine.lay_out()  # the K-major layout before anything is timed
        self.dec = None
        if loop in ("lean", "lean_torch", "compiled"):
            self.dec = LeanDecoder(self.model, self.ids.shape[1] + self.new, self.ids.shape[0], ctrl,
                                   compile=loop == "compiled", kernels=loop == "lean", per_token=engine)

    def detach(self) -> None:
        if self.strat is not None:
            self.strat.detach()
        self.strat = self.dec = None

    def once(self, timed: bool) -> None:
        ctrl = getattr(self.strat, "controller", None)
        b0 = ctrl.counts.build_seconds if ctrl is not None else 0.0
        if self.dec is not None:
            p, d, self.tokens = _generate_lean(self.dec, self.ids, self.new, self.device)
        else:
            p, d, self.tokens = _generate_hf(self.model, self.ids, self.new, self.pad, self.device)
        if not timed:
            return
        self.prefill.append(p)
        self.decode.append(d)
        self.remask.append((ctrl.counts.build_seconds - b0) if ctrl is not None else 0.0)
        kept, union_keep, attn_kept, ran = 1.0, 1.0, 1.0, False
        if ctrl is not None:
            masks = ctrl.masks()  # (L, B, I), original order
            kept, union_keep, ran = float(masks.float().mean()), float(masks.any(dim=1).float().mean()), bool(ctrl.compacted)
        elif self.strat is not None:  # a per-token method: what its decode steps skipped (the prompt ran dense)
            sparsity = self.strat.summary()["sparsity"]
            kept = union_keep = 1.0 - float(sparsity["effective"] or 0.0)
            attn_kept = 1.0 - float(sparsity.get("effective_attention") or 0.0)
        self.info = {"kept": kept, "union_keep": union_keep, "attn_kept": attn_kept, "ran": ran,
                     "mem": peak_memory(self.device),
                     "state": state_bytes(ctrl)["total"] if ctrl is not None else 0}


def measure_batch(model, tokenizer, cfg, B: int, loops: list[str], device, progress=None) -> list[dict[str, Any]]:
    """Every (loop, mode, sparsity, method) of one batch size. The modes are INTERLEAVED within each repeat (dense,
    masked, compacted, ..., then again), each attached for its one generation, so a speed-up is the median of
    per-repeat PAIRED ratios against dense in the same repeat (with a bootstrap interval): a slow minute on a shared
    machine slows both sides of a ratio. Every timed generation is preceded by a measurement of the streaming read
    bandwidth (its share is paired with it). The compiled loop runs its repeats in one block (each attach would
    compile again)."""
    from dart.bench.bandwidth import ReadProbe
    from dart.stats import paired_ratio

    ids = prompt_ids(tokenizer, B, int(cfg.prompt_tokens), device)
    new = int(cfg.new_tokens)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    max_keep = float(cfg.get("union_max_keep", 0.9))
    warm, reps = int(cfg.warmup), int(cfg.repeats)
    runs = {k: _Run(model, tokenizer, k, ids, new, pad, device) for k in configs(cfg, B, loops)}
    probe = ReadProbe() if device.type == "cpu" and cfg.get("bandwidth", True) else None
    bandwidth = []  # every probe: the machine's streaming read GB/s
    load_start = os.getloadavg()[0]
    interleaved = [r for k, r in runs.items() if k[0] != "compiled"]
    for rep in range(warm + reps):
        for run in interleaved:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            run.attach()
            try:
                if probe is not None and rep >= warm:  # right before the generation it is paired with
                    bandwidth.append(probe.measure(passes=3))
                    run.bw.append(bandwidth[-1]["read_gb_s"])
                run.once(timed=rep >= warm)
            finally:
                run.detach()
            if progress is not None:
                progress()
    for run in (r for k, r in runs.items() if k[0] == "compiled"):
        run.attach()
        try:
            for rep in range(warm + reps):
                if probe is not None and rep >= warm:
                    bandwidth.append(probe.measure(passes=3))
                    run.bw.append(bandwidth[-1]["read_gb_s"])
                run.once(timed=rep >= warm)
                if progress is not None:
                    progress()
        finally:
            run.detach()
    del probe
    load_end = os.getloadavg()[0]
    steps = new - 1
    rows = []
    for (loop, mode, sp, method), run in runs.items():
        rates = [steps * B / d for d in run.decode]
        info = run.info
        row = {"batch": B, "loop": loop, "mode": row_mode(mode, B), "sparsity": sp, "method": method,
               "achieved_sparsity": 1.0 - info["kept"], "union_keep": info["union_keep"],
               "tokens_per_s": statistics.median(rates), "tokens_per_s_all": rates,
               "prefill_ms": 1e3 * statistics.median(run.prefill), "remask_ms": 1e3 * statistics.median(run.remask),
               "decode_ms_per_step": 1e3 * statistics.median(run.decode) / steps,
               "decode_ms_per_token": 1e3 * statistics.median(run.decode) / (steps * B),
               "engine_state_bytes": info["state"], "loadavg_1m": load_start, "loadavg_1m_end": load_end,
               "interleaved": loop != "compiled", **info["mem"]}
        reads_less = mode in ("compacted", "shared", "sparse")
        wb = weight_bytes_per_token(model, info["union_keep"], info.get("attn_kept", 1.0))
        row["bytes_per_token"] = wb["pruned"] if reads_less else wb["dense"]  # weight bytes read per step
        row["bytes_bound_limit"] = wb["limit"]  # what the masks allow if run compacted (a batch: its union)
        row["bound"] = wb["limit"] if reads_less else 1.0  # dense bytes / the bytes this execution reads
        gbs = [row["bytes_per_token"] * steps / d / 1e9 for d in run.decode]  # weight bytes streamed per second
        row["weight_gb_s"] = statistics.median(gbs)
        if run.bw and len(run.bw) == len(gbs):  # each generation against the bandwidth measured just before it
            row["share_of_bandwidth"] = statistics.median(g / b for g, b in zip(gbs, run.bw))
            row["bandwidth_gb_s"] = statistics.median(run.bw)
        if mode in ("compacted", "shared"):
            row["compacted_ran"] = info["ran"]  # the engine really ran the prefix (forced: execution=compact)
            if B > 1 and mode == "compacted":  # what execution=auto would do with this union
                row["auto_execution"] = "union" if info["union_keep"] <= max_keep else "masked"
        dense = runs.get((loop, "dense", 0.0, "dense"))
        med, ratios, ci = paired_ratio(rates, [steps * B / d for d in dense.decode] if dense is not None else [])
        row["speedup"], row["speedup_all"], row["speedup_ci"] = med, ratios, list(ci) if ci else None
        row["share_of_limit"] = row["speedup"] / wb["limit"] if row["speedup"] and reads_less else None
        if dense is not None and dense.tokens is not None and mode != "dense":  # how much the text differs from dense
            row["token_agreement_with_dense"] = float((run.tokens == dense.tokens).float().mean())
        rows.append(row)
    hf = runs.get(("hf", "dense", 0.0, "dense"))
    if hf is not None and ("lean", "dense", 0.0, "dense") in runs:
        hf_rate = statistics.median(steps * B / d for d in hf.decode)
        for r in rows:
            r["speedup_vs_hf_dense"] = r["tokens_per_s"] / hf_rate
    return rows, bandwidth


def remask_demo(model, tokenizer, cfg, sparsity: float) -> dict[str, Any]:
    """DART (compacted, detector on) on the first two-topic drift prompt: the share of decode time spent
    re-tracing (the dense steps after a trigger are part of decoding, as in real use) and re-masking."""
    from dart.evals.drift import PROMPTS
    from dart.evals.generation import render_prompt
    import yaml

    device = next(model.parameters()).device
    spec = yaml.safe_load(PROMPTS.read_text())
    text = spec["template"].format(**spec["pairs"][0])
    chat = bool(cfg.model.get("instruct", False))
    ids = torch.tensor([render_prompt(tokenizer, text, chat)], device=device)
    new = 200
    strat = build_strategy("dart", sparsity=sparsity, masking_step=int(cfg.remask_masking_step), execution="compact")
    strat.attach(model, tokenizer)
    try:
        dec = LeanDecoder(model, ids.shape[1] + new, 1, strat.controller)
        _generate_lean(dec, ids, new, device)  # warm-up
        b0, n0 = strat.controller.counts.build_seconds, len(strat.controller.counts.triggers)
        p, d, _ = _generate_lean(dec, ids, new, device)
        remask = strat.controller.counts.build_seconds - b0
        triggers = len(strat.controller.counts.triggers) - n0
    finally:
        strat.detach()
    return {"sparsity": sparsity, "masking_step": int(cfg.remask_masking_step), "new_tokens": new,
            "prompt_tokens": ids.shape[1], "triggers": triggers, "decode_s": d, "remask_s": remask,
            "remask_share": remask / d, "tokens_per_s": (new - 1) / d}
