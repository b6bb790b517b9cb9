"""What the engine costs, measured from its own tensors and counters (results.json "overhead").

state_bytes: statistics + static score weights (priors) + masks + neuron order + detector, in bytes.
flops_ratio: the engine's tracing, scoring and detection FLOPs over the model's FLOPs for the tokens it ran
(2 x the parameters each token multiplies through: every layer and the output head, not the embedding lookup).
Applying a 0/1 mask (masked execution) is reported apart: compacted execution does not pay it.
"""
from __future__ import annotations

import math


def model_flops_per_token(model) -> float:
    emb = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == emb.data_ptr()
    # the input embedding is a lookup; a tied output head multiplies through the same matrix
    return 2.0 * (total - emb.numel() + (emb.numel() if tied else 0))


TRACE_OPS_PER_NEURON = {"l2": 3, "ema": 3, "griffin": 6}  # cast+square(or abs)+multiply-add; griffin normalises


def engine_flops(c) -> dict[str, float]:
    L, I = c.L, c.I
    traced = float(c.counts.tokens_traced)
    out = {"tracing": traced * L * I * TRACE_OPS_PER_NEURON[c.spec.statistic]}
    if c.stats.alignment:
        D = c.ffns[0].w.w_down_t.shape[1]
        out["alignment"] = traced * L * 12 * D
    out["mask_build"] = c.counts.builds * L * (2 * I + I * max(1.0, math.log2(I)))
    if c.detector is not None:
        Ds = c.detector.D
        out["detector"] = (c.counts.baseline_vectors + c.counts.decode_signal_tokens) * 2 * Ds + c.counts.checks * 6 * Ds
    return out


def summarize(c, model) -> dict:
    flops = engine_flops(c)
    per_token = model_flops_per_token(model)
    seen = float(c.counts.tokens_seen)
    state = state_bytes(c)
    return {
        "state_bytes": state["total"],
        "state_breakdown": {k: v for k, v in state.items() if k != "total"},
        "engine_flops": sum(flops.values()),
        "engine_flops_breakdown": flops,
        "model_flops": per_token * seen,
        "flops_ratio": sum(flops.values()) / (per_token * seen) if seen else None,
        "tokens_seen": seen,
        "tokens_traced": float(c.counts.tokens_traced),
        "mask_builds": c.counts.builds,
        "mask_build_s": round(c.counts.build_seconds, 4),
    }


def analytic(num_layers: int, intermediate: int, hidden: int, params: float, spec, prompt_tokens: int = 512,
             new_tokens: int = 512, batch: int = 1, mask_bytes: int = 2, attn_width: int | None = None,
             tied_vocab_params: float = 0.0) -> dict:
    """The same accounting as `summarize`, from architecture numbers alone (no weights needed): state bytes as
    state_bytes(controller) would measure them and the FLOPs ratio of one request of prompt_tokens +
    new_tokens (generated tokens, the first from the prefill), masking_step 1, one mask build and no re-trace. mask_bytes: the model dtype's size (the 0/1 mask is kept
    in it). Checked against measured tensors on tiny models (tests/test_engine_execution.py)."""
    L, I, D, B = num_layers, intermediate, hidden, batch
    Ds = (attn_width or D) * len({x % L for x in spec.drift.layers}) if spec.drift.enabled else 0
    alignment = spec.allocation == "auto"
    state = {
        "statistics": 4 * L * B * I + 4 * L * B * 3,  # A (L, B, I) and the alignment sums (L, B, 3)
        "priors": 4 * L * I if spec.needs_priors else 0,
        "masks": mask_bytes * L * B * I,
        "neuron_order": 4 * L * I,
        "detector": 4 * B * (3 * Ds + 2) if Ds else 0,  # total, center, current (B, Ds); count, tau (B,)
    }
    state["total"] = sum(state.values())
    state["detector_peak"] = state["detector"] + (4 * B * Ds * (prompt_tokens // spec.drift.window + 1) if Ds else 0)
    traced = float(B * prompt_tokens)
    flops = {"tracing": traced * L * I * TRACE_OPS_PER_NEURON[spec.statistic]}
    if alignment:
        flops["alignment"] = traced * L * 12 * D
    flops["mask_build"] = B * L * (2 * I + I * max(1.0, math.log2(I)))
    if Ds:  # the first new token comes from the prefill: new_tokens - 1 decode forwards, all masked (m = 1); the
        # baseline holds the prompt (and, drift.phase=published, forward 1), the later vectors fill windows
        decode = new_tokens - 1
        shift = 1 if spec.drift.phase == "published" else 0
        windows = max(decode - shift, 0)
        flops["detector"] = (traced + B * shift + B * windows) * 2 * Ds + B * (windows // spec.drift.window) * 6 * Ds
    model = 2.0 * (params + tied_vocab_params) * B * (prompt_tokens + new_tokens - 1)  # tokens the model ran
    return {"state_bytes": state["total"], "state_breakdown": state, "engine_flops": sum(flops.values()),
            "engine_flops_breakdown": flops, "model_flops": model, "flops_ratio": sum(flops.values()) / model}


def state_bytes(c) -> dict[str, int]:
    """The engine state a controller holds, in bytes (and the drift detector's peak)."""
    parts = {
        "statistics": c.stats.nbytes(),
        "priors": 0 if c.weight is None else c.weight.nbytes(),
        "masks": c.M.nbytes(),
        "neuron_order": c.order.nbytes(),
        "detector": 0 if c.detector is None else c.detector.nbytes(),
    }
    parts["total"] = sum(parts.values())
    parts["detector_peak"] = c.counts.peak_detector_bytes
    return parts
