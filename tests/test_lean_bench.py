"""The lean decode loop (dart.bench.lean) against transformers, and `python -m dart.bench` on a tiny model."""
from __future__ import annotations

import json
import statistics
import sys

import pytest
import torch

from tests.conftest import REPO, tiny_gpt2, tiny_llama  # noqa: E402
from dart.bench.decode import weight_bytes_per_token  # noqa: E402
from dart.bench.lean import LeanDecoder  # noqa: E402
from dart.errors import ConfigError  # noqa: E402
from dart.compose import build_strategy  # noqa: E402

IDS = torch.tensor([[5, 17, 99, 3, 42, 77, 12, 8, 64, 31], [9, 1, 2, 120, 7, 7, 55, 60, 101, 4]])


@pytest.fixture(autouse=True)
def _priors_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DART_CACHE", str(tmp_path / "cache"))


def model():
    m = tiny_llama(layers=3, vocab=128)
    m.generation_config.eos_token_id = None
    m.generation_config.pad_token_id = 0
    return m


def hf_generate(m, ids, n):
    out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                     output_logits=True, return_dict_in_generate=True)
    return out.sequences[:, ids.shape[1]:], torch.stack(out.logits, dim=1)


def test_lean_forward_matches_the_model_in_prefill_and_chunks():
    m = model()
    ref = m(IDS).logits
    dec = LeanDecoder(m, 32, batch=2)
    torch.testing.assert_close(dec.forward(IDS, 0, last_only=False), ref, atol=1e-5, rtol=1e-5)
    dec2 = LeanDecoder(m, 32, batch=2)
    dec2.forward(IDS[:, :4], 0)  # a chunk after cached tokens needs the offset causal mask
    torch.testing.assert_close(dec2.forward(IDS[:, 4:], 4, last_only=False), ref[:, 4:], atol=1e-5, rtol=1e-5)


def test_lean_forward_matches_the_model_in_bf16():
    """In bf16 the lean loop's fused RMSNorm (normalised in fp32, cast, then scaled, as the module computes it) and
    its attention give the model's logits within bf16's rounding (tests/test_bf16_exactness.py: 0.05) and the same
    greedy tokens with the engine compacting."""
    m = model().to(torch.bfloat16)
    ref = m(IDS).logits.float()
    dec = LeanDecoder(m, 32, batch=2)
    assert (dec.forward(IDS, 0, last_only=False).float() - ref).abs().max().item() < 0.05
    strat = build_strategy("static_prompt", sparsity=0.5, execution="compact")
    strat.attach(m)
    hf_tokens, _ = hf_generate(m, IDS[:1], 12)
    lean = LeanDecoder(m, IDS.shape[1] + 12, batch=1, controller=strat.controller).generate(IDS[:1], 12)
    assert strat.controller.compacted and torch.equal(lean, hf_tokens)
    strat.detach()


@pytest.mark.parametrize("make", [
    lambda: None,
    lambda: build_strategy("static_prompt", sparsity=0.5, execution="compact"),
    lambda: build_strategy("static_prompt", sparsity=0.7, execution="masked"),
    lambda: build_strategy("dart", retrace_tokens=None, sparsity=0.5, masking_step=2, drift=dict(window=3, sigma_scale=0.0, min_margin=0.0)),
    lambda: build_strategy("static_prompt", sparsity=0.5, masking_step=2, allocation="auto", execution="compact"),  # hooks on a norm
], ids=["dense", "static_compact", "static_masked", "dart_drift", "static_auto"])
@pytest.mark.parametrize("batch", [1, 2])
def test_lean_generate_equals_transformers_generate_with_the_engine(make, batch):
    ids = IDS[:batch]
    m = model()
    strat = make()
    if strat is not None:
        strat.attach(m)
    hf_tokens, _ = hf_generate(m, ids, 16)
    hf_triggers = [dict(t) for t in strat.controller.counts.triggers] if strat else []
    c = strat.controller if strat else None
    lean = LeanDecoder(m, ids.shape[1] + 16, batch=batch, controller=c).generate(ids, 16)
    assert torch.equal(lean, hf_tokens)
    if strat is not None:
        new = strat.controller.counts.triggers[len(hf_triggers):]
        assert [(t["row"], t["step"]) for t in new] == [(t["row"], t["step"]) for t in hf_triggers]
        if strat.name == "dart":
            assert len(hf_triggers) > 0  # margin 0 and a 3-token window: the detector does fire here
        if strat.spec.execution == "compact" and batch == 1 and strat.spec.allocation == "uniform":
            assert strat.controller.compacted and sum(strat.controller.kept_prefix) == 3 * 32
        if strat.spec.allocation == "auto":  # per-layer counts from the norms' hooks: not uniform, same mean
            assert len(set(strat.controller.masks()[:, 0].sum(-1).tolist())) > 1
        strat.detach()


def test_lean_loop_names_the_supported_architectures():
    with pytest.raises(ConfigError, match="llama, mistral, qwen2, qwen3.*'gpt2'"):
        LeanDecoder(tiny_gpt2(), 16)


def test_weight_bytes_per_token_by_hand():
    m = tiny_llama(layers=2, hidden=32, inter=64, vocab=128)  # untied head
    wb = weight_bytes_per_token(m, ffn_kept=0.25)
    D, I, V, L = 32, 64, 128, 2
    attn = D * D + 2 * D * (D // 2) + D * D  # q, k, v (2 of 4 heads for kv), o
    layer = attn + 3 * D * I + 2 * D  # + gate, up, down + two norms
    dense = 4 * (L * layer + D + V * D)  # fp32; the final norm and the head; the embedding is a lookup
    assert wb["dense"] == dense and wb["ffn"] == 4 * L * 3 * D * I
    assert wb["pruned"] == dense - 0.75 * wb["ffn"] and wb["limit"] == pytest.approx(dense / wb["pruned"])


def test_bench_cli_writes_json_markdown_and_plot(tmp_path):
    import subprocess

    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "dart.bench", "model=tiny_llama", "repeats=2", "warmup=0", "new_tokens=6",
         "prompt_tokens=16", "sparsities=[0.5]", "batch_sizes=[1,3]", "loops=[lean,hf,compiled]", "batch_loops=[lean]",
         "sparse_methods=[teal]", "remask_demo=false", "progress_s=0", f"out={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # stdout is a pipe: plain progress lines (every step with progress_s=0, the last one is the table), no bar
    assert "[dart] decode bench: step 1/30, " in proc.stdout and "step 29/30" in proc.stdout and "step 30/30" not in proc.stdout
    res = json.loads((out / "bench.json").read_text())
    rows = {(r["batch"], r["loop"], r["mode"], r["sparsity"]): r for r in res["rows"]}
    assert set(rows) == {(1, loop, mode, s) for loop in ("lean", "hf", "compiled") for mode, s in
                         (("dense", 0.0), ("masked", 0.5), ("compacted", 0.5))} | {
                        (3, "lean", mode, s) for mode, s in (("dense", 0.0), ("masked", 0.5), ("union", 0.5), ("shared", 0.5))} | {
                        (1, loop, "sparse", 0.5) for loop in ("lean", "hf")}  # per-token: batch 1, not compiled
    bw = res["bandwidth"]  # measured before each timed generation (15 runs, 2 repeats)
    assert len(bw["per_repeat"]) == 30 and bw["read_gb_s"] > 0 and res["kernels"]["available"] in (True, False)
    for r in rows.values():
        assert len(r["tokens_per_s_all"]) == 2 and r["tokens_per_s"] > 0
        for key in ("batch", "mode", "method", "sparsity", "speedup", "union_keep", "bound", "loadavg_1m_end"):
            assert key in r
        # the weight bytes it streamed per second, and their share of the bandwidth of the same repeats
        assert r["weight_gb_s"] == pytest.approx(statistics.median(
            r["bytes_per_token"] * 5 / (r["batch"] * 5 / t) / 1e9 for t in r["tokens_per_s_all"]))
        assert 0 < r["share_of_bandwidth"] < 2 and r["bandwidth_gb_s"] > 0
        # paired: the speed-up is the median of the per-repeat ratios against dense of the same repeat, with an interval
        assert r["speedup"] == pytest.approx(statistics.median(r["speedup_all"])) and len(r["speedup_all"]) == 2
        assert r["speedup_ci"][0] <= r["speedup"] <= r["speedup_ci"][1]
        assert r["interleaved"] == (r["loop"] != "compiled")
    teal = rows[(1, "lean", "sparse", 0.5)]  # its bytes from its measured effective sparsity
    assert teal["method"] == "teal" and 0.3 < teal["achieved_sparsity"] < 0.7
    assert teal["bound"] == pytest.approx(res["weight_bytes"]["dense"] / teal["bytes_per_token"])
    shared = rows[(3, "lean", "shared", 0.5)]  # one kept set for the batch: batch 1's count, one prefix
    assert shared["union_keep"] == 0.5 and shared["achieved_sparsity"] == 0.5 and shared["compacted_ran"]
    assert shared["bound"] == pytest.approx(rows[(1, "lean", "compacted", 0.5)]["bound"])
    # compacted and masked execution of the same mask write the same text
    assert rows[(1, "lean", "masked", 0.5)]["token_agreement_with_dense"] == rows[(1, "lean", "compacted", 0.5)]["token_agreement_with_dense"]
    assert rows[(3, "lean", "masked", 0.5)]["token_agreement_with_dense"] == rows[(3, "lean", "union", 0.5)]["token_agreement_with_dense"]
    for mode in ("masked", "compacted"):  # the compiled loop writes the eager loop's text
        assert rows[(1, "compiled", mode, 0.5)]["token_agreement_with_dense"] == rows[(1, "lean", mode, 0.5)]["token_agreement_with_dense"]
    one, union = rows[(1, "lean", "compacted", 0.5)], rows[(3, "lean", "union", 0.5)]
    assert one["achieved_sparsity"] == 0.5 and one["union_keep"] == 0.5 and one["compacted_ran"]
    assert rows[(1, "lean", "dense", 0.0)]["speedup"] == 1.0 and rows[(3, "lean", "dense", 0.0)]["speedup"] == 1.0
    # three different prompts: a union larger than one row's mask, and its bound from the union's bytes
    assert 0.5 < union["union_keep"] <= 1.0 and union["achieved_sparsity"] == 0.5 and union["compacted_ran"]
    wb = res["weight_bytes"]
    assert union["bound"] == pytest.approx(wb["dense"] / (wb["dense"] - wb["ffn"] * (1 - union["union_keep"])))
    assert union["auto_execution"] == ("union" if union["union_keep"] <= 0.9 else "masked")
    assert rows[(3, "lean", "masked", 0.5)]["bound"] == 1.0 and rows[(1, "lean", "dense", 0.0)]["bound"] == 1.0
    md = (out / "bench.md").read_text()
    assert md.count("| lean |") == 8 and md.count("| compiled |") == 3 and "| 3 | lean | union | static_prompt | 0.50 |" in md
    assert "| 3 | lean | shared | static_prompt | 0.50 |" in md and "paired ratios" in md and "Streaming read bandwidth" in md
    assert (out / "speedup.png").stat().st_size > 1000


def test_bench_rejects_bad_values(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "dart.bench", "model=tiny_llama", "modes=[dense,fast]",
                           f"out={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "fast" in proc.stderr and "compacted" in proc.stderr


def test_bench_rejects_bad_batch_sizes(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "dart.bench", "model=tiny_llama", "batch_sizes=[1,0]",
                           f"out={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "batch_sizes=[1, 0] must be a list of positive integers" in proc.stderr


def _decode(m, ids, strat, compile, n=18):
    if strat is not None:
        strat.attach(m)
    c = strat.controller if strat is not None else None
    try:
        dec = LeanDecoder(m, ids.shape[1] + n + 1, batch=ids.shape[0], controller=c, compile=compile)
        tok, pos, out = dec.forward(ids, 0)[:, -1].argmax(-1, keepdim=True), ids.shape[1], []
        for _ in range(n):
            logits = dec.forward(tok, pos)[:, -1]
            out.append(logits)
            tok, pos = logits.argmax(-1, keepdim=True), pos + 1
        return torch.stack(out, 1), ([(t["row"], t["step"]) for t in c.counts.triggers] if c is not None else [])
    finally:
        if strat is not None:
            strat.detach()


def test_compiled_steps_equal_the_eager_loop(monkeypatch):
    """torch.compile'd steady steps (compact, a batch's union, masked while a row re-traces) against the eager
    loop: the same logits within float tolerance and the same drift triggers."""
    m = model()
    ran = []
    compiled_step = LeanDecoder._run_compiled
    monkeypatch.setattr(LeanDecoder, "_run_compiled", lambda self, ids, pos: (ran.append(pos), compiled_step(self, ids, pos))[1])
    cases = [(IDS[:1], lambda: build_strategy("static_prompt", sparsity=0.5, execution="compact")),
             (IDS, lambda: build_strategy("dart", retrace_tokens=None, sparsity=0.5, masking_step=2, execution="compact",
                                drift=dict(window=3, sigma_scale=0.0, min_margin=0.0)))]
    for ids, make in cases:
        eager, t_eager = _decode(m, ids, make(), compile=False)
        ran.clear()
        compiled, t_compiled = _decode(m, ids, make(), compile=True)
        assert len(ran) >= 10  # most steps ran compiled (tracing and mask-building steps run eager)
        assert (eager - compiled).abs().max() <= 1e-5 and t_eager == t_compiled
        assert ids.shape[0] == 1 or len(t_eager) >= 2  # the batch re-traces: its masked and union steps both ran


def test_profile_bench_splits_the_step(tmp_path):
    """python -m dart.bench.profile: per mode the step's FFN time and the rest, and the overhead-aware limit."""
    import subprocess

    out = tmp_path / "profile"
    proc = subprocess.run([sys.executable, "-m", "dart.bench.profile", "model=tiny_llama", "new_tokens=6",
                           "prompt_tokens=16", "repeats=2", "warmup=0", "sparsities=[0.5]", "sparse_methods=[teal]",
                           f"out={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "profile.json").read_text())
    rows = {(r["mode"], r["sparsity"]): r for r in res["rows"]}
    assert set(rows) == {("dense", 0.0), ("compacted", 0.5), ("sparse", 0.5)}
    teal = rows["sparse", 0.5]  # TEAL on the sparse-input kernels: kept = 1 - its measured effective sparsity
    assert teal["method"] == "teal" and 0 < teal["ffn_ms"] < teal["ms_per_step"] and teal["ffn_gb_s"] > 0
    kept = (rows["dense", 0.0]["ms_per_step"] / teal["overhead_aware_limit"] - rows["dense", 0.0]["rest_ms"]) / rows["dense", 0.0]["ffn_ms"]
    assert 0.3 < kept < 0.7  # TEAL at 50% skips about half of the FFN's reads
    dense, comp = rows["dense", 0.0], rows["compacted", 0.5]
    assert dense["speedup"] == 1.0 and 0 < dense["ffn_ms"] < dense["ms_per_step"]
    assert comp["rest_ms"] == pytest.approx(comp["ms_per_step"] - comp["ffn_ms"])
    # the overhead-aware limit by its formula: dense time over the dense rest + the kept share of the dense FFN time
    assert comp["overhead_aware_limit"] == pytest.approx(dense["ms_per_step"] / (dense["rest_ms"] + 0.5 * dense["ffn_ms"]))
    # ... which is 1 / (1 - f (1 - kept)) with f the FFN's share of the dense step (the bytes bound: f its share of bytes)
    assert comp["overhead_aware_limit"] == pytest.approx(1 / (1 - dense["ffn_share_of_step"] * 0.5))
    assert "overhead-aware limit" in (out / "profile.md").read_text()
