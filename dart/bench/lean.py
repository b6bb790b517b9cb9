"""A lean greedy decode loop for Llama-family models (gpt-fast style): the model's own weights, a preallocated KV
cache, no per-token Python beyond one call per layer module.

Why: in transformers' `generate` the per-token overhead (cache objects, mask building, logits processors, output
dataclasses) is a large share of a small model's decode step on CPU, and it does not shrink when the FFN does, so
it caps the speed-up that compacted FFNs can show. This loop runs the same modules (norms, projections, and
`layer.mlp`, i.e. the engine's PrunableFFN when a strategy is attached) with the KV cache as two tensors.

It drives the engine directly: `Controller.begin_forward` before each forward, `record_attention` for the drift
detector's monitored layers and `end_forward` after, so tracing, masking, compaction and re-tracing behave as in
`model.generate` (tested: same tokens and logits within float tolerance). Float32 norms run as one fused op, the
projections as plain F.linear calls and the FFN through the engine directly (fewer dispatches; modules with hooks
are still called as modules).

Every product of a decode step (q/k/v as one GEMV, o_proj, the FFN, the LM head) runs through the CPU decode kernels
(dart.kernels) where they are built and fit (a CPU, bf16 or fp32, at most 8 rows): `kernels=False` runs torch's own.
A per-token method (TEAL, WINA, CATS: dart.strategies.per_token) is driven through its engine (`per_token`): the
prompt dense, every decode step sparse, its FFNs on the sparse-input kernels.

`compile=True` (opt-in): steady decode steps run as one torch.compile'd graph per FFN shape, which removes most
of the per-op overhead that a small model's step pays on a CPU (see README "Performance"); torch's products there.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from dart import kernels
from dart.engine.ffn import compacted as ffn_compacted
from dart.engine.ffn import down as ffn_down
from dart.engine.ffn import intermediate as ffn_intermediate
from dart.engine.plan import ROWS
from dart.errors import ConfigError

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


def _plain_rms_norm(mod) -> bool:
    """weight * x / sqrt(mean(x^2) + eps): the RMSNorm of Llama, Mistral, Qwen2/3 (not Gemma's 1 + weight)."""
    name = type(mod).__name__
    return (name in ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")
            and isinstance(getattr(mod, "variance_epsilon", None), float) and getattr(mod, "weight", None) is not None)


def _hooked(mod) -> bool:
    return bool(mod._forward_pre_hooks or mod._forward_hooks)


@torch.no_grad()
def fuse_qkv(attn) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One (Hq + 2 Hkv) x D weight (and bias) for q, k and v: a decode step reads them in one GEMV instead of three
    small ones (small GEMVs run far below the memory bandwidth on a CPU). The three weight parameters become row views
    of it (the same values, no extra memory), so the model computes exactly as before. Once fused, a second call
    finds the three weights adjacent in one storage and returns a view of them (nothing is stored on the module)."""
    projs = (attn.q_proj, attn.k_proj, attn.v_proj)
    ws = [p.weight.data for p in projs]
    rows = sum(w.shape[0] for w in ws)
    adjacent = all(w.is_contiguous() and w.untyped_storage().data_ptr() == ws[0].untyped_storage().data_ptr()
                   for w in ws) and all(b.storage_offset() == a.storage_offset() + a.numel() for a, b in zip(ws, ws[1:]))
    if adjacent:
        fused = ws[0].new_empty(0).set_(ws[0].untyped_storage(), ws[0].storage_offset(), (rows, ws[0].shape[1]))
    else:
        fused = torch.cat(ws)
        start = 0
        for p in projs:
            n = p.weight.shape[0]
            p.weight.data = fused[start:start + n]
            start += n
    bias = None
    if any(p.bias is not None for p in projs):
        bias = torch.cat([p.bias.data if p.bias is not None else fused.new_zeros(p.weight.shape[0]) for p in projs])
    return fused, bias


class LeanDecoder:
    def __init__(self, model, max_len: int, batch: int = 1, controller=None, compile: bool = False,
                 compile_mode: str | None = None, time_ffn: bool = False, kernels: bool = True, per_token=None):
        """compile: run steady single-token steps (no tracing or mask build inside that forward) through one
        torch.compile'd function over the whole preallocated cache (dynamic=False: one compilation per FFN shape,
        i.e. per kept prefix, about a minute each on a 2-core CPU; cached on disk by inductor); other forwards run
        eager. Tested to give the eager loop's tokens and triggers. docs/performance.md has what it gained.
        time_ffn: add the wall time of every FFN call to `ffn_seconds` (dart.bench.profile; a CPU measurement: no
        device synchronisation)."""
        cfg = model.config
        if cfg.model_type not in SUPPORTED:
            raise ConfigError(f"the lean decode loop supports model types {', '.join(SUPPORTED)}, not "
                              f"{cfg.model_type!r}; use transformers' generate (bench loop=hf) for it")
        self.model, self.controller, self.per_token = model, controller, per_token
        self.kernels = bool(kernels) and not compile  # a compiled step runs torch's products
        self.layers = list(model.model.layers)
        self.H, self.Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.H
        w = model.model.embed_tokens.weight
        L, B = len(self.layers), batch
        # one tensor per layer: a compiled step writes them in place without copying the others
        self.k = [torch.zeros(B, self.Hkv, max_len, self.hd, dtype=w.dtype, device=w.device) for _ in range(L)]
        self.v = [torch.zeros_like(t) for t in self.k]
        pos = torch.arange(max_len, device=w.device)[None]
        cos, sin = model.model.rotary_emb(w[:1], pos)  # (1, max_len, hd): the model's own rope (scaling included)
        self.cos, self.sin = cos[0].to(w.dtype), sin[0].to(w.dtype)
        self.max_len = max_len
        self.monitored = set(controller.monitored) if controller is not None else set()
        # TEAL as published sparsifies q, k, v and o itself (dart.strategies.per_token_attention): its projections
        # run as modules, unfused
        self.sparse_attention = per_token is not None and per_token.attention is not None
        self.qkv = None if self.sparse_attention else [fuse_qkv(layer.self_attn) for layer in self.layers]
        # a model without an engine: its FFNs through the engine's functions, i.e. the kernels (the module's own
        # Linear layers would run torch's products)
        self.plain = None
        if self.kernels and controller is None and per_token is None:
            from dart.engine.adapters import adapter_for

            self.plain = adapter_for(model).all_weights(model)
        norms = [m for layer in self.layers for m in (layer.input_layernorm, layer.post_attention_layernorm)]
        self._rms = {id(m): _plain_rms_norm(m) for m in norms + [model.model.norm]}
        self._step = None
        self.time_ffn, self.ffn_seconds = bool(time_ffn), 0.0
        if compile:
            self._pos = torch.zeros(1, dtype=torch.long, device=w.device)
            self._arange = torch.arange(max_len, device=w.device)
            self._weights = [f.w for f in controller.ffns] if controller is not None else None
            import torch._dynamo.config as dynamo_config

            # one compilation per FFN shape (dense, masked, each kept prefix): more than dynamo's default 8 in a bench
            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
            self._step = torch.compile(self._compiled_step, dynamic=False, mode=compile_mode)

    def _qkv_flat(self, l: int, h: torch.Tensor) -> torch.Tensor:
        """q, k and v side by side: one fused GEMV, or the three sparse-input projections of TEAL as published."""
        if self.qkv is None:
            a = self.layers[l].self_attn
            return torch.cat([a.q_proj(h), a.k_proj(h), a.v_proj(h)], dim=-1)
        return kernels.linear(h, *self.qkv[l])

    def _o(self, attn, o: torch.Tensor) -> torch.Tensor:
        return attn.o_proj(o) if self.sparse_attention else kernels.linear(o, attn.o_proj.weight, attn.o_proj.bias)

    def _qkv(self, l: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, _ = h.shape
        qkv = self._qkv_flat(l, h)
        nq, nk = self.H * self.hd, self.Hkv * self.hd
        return (qkv[..., :nq].view(B, T, self.H, self.hd), qkv[..., nq:nq + nk].view(B, T, self.Hkv, self.hd),
                qkv[..., nq + nk:].view(B, T, self.Hkv, self.hd))

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    def _add_norm(self, mod, x: torch.Tensor, add: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + add, the norm of it): one kernel call in a decode step (dart.kernels: the same roundings), else the
        residual add and `_norm`."""
        if add is not None and x.shape[1] == 1 and self._rms.get(id(mod)) and not _hooked(mod) and kernels.fits(x):
            B, _, D = x.shape
            res, y = kernels.ext().rms_norm(x.view(B, D), add.reshape(B, D), mod.weight, mod.variance_epsilon)
            return res.view(B, 1, D), y.view(B, 1, D)
        x = x if add is None else x + add
        return x, self._norm(mod, x)

    def _norm(self, mod, x: torch.Tensor) -> torch.Tensor:
        """The model's RMSNorm as one fused op (fewer dispatches): in float32 with its weight; in a half dtype as the
        module computes it, normalised in float32, cast back, then scaled by the weight."""
        if self._rms.get(id(mod)) and not _hooked(mod):
            if x.dtype == torch.float32:
                return F.rms_norm(x, (x.shape[-1],), mod.weight, mod.variance_epsilon)
            return mod.weight * F.rms_norm(x.float(), (x.shape[-1],), None, mod.variance_epsilon).to(x.dtype)
        return mod(x)  # (hooks, such as depth-aware allocation's on the FFN's input norm, run as usual)

    def _attention(self, l: int, attn, h: torch.Tensor, pos: int) -> torch.Tensor:
        B, T, _ = h.shape
        if T == 1 and not hasattr(attn, "q_norm") and kernels.fits(h):  # a decode step: rope to values in one call
            qkv = self._qkv_flat(l, h.view(B, -1))
            o = kernels.ext().attend(qkv, self.k[l], self.v[l], pos, self.cos, self.sin, self.H, self.Hkv,
                                     self.hd ** -0.5)
            return self._o(attn, o.view(B, 1, -1))
        q, k, v = self._qkv(l, h)
        if hasattr(attn, "q_norm"):  # qwen3
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        cos, sin = self.cos[pos:pos + T], self.sin[pos:pos + T]
        q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        self.k[l][:, :, pos:pos + T] = k
        self.v[l][:, :, pos:pos + T] = v
        keys, values = self.k[l][:, :, :pos + T], self.v[l][:, :, :pos + T]
        if T == 1:  # one query per head: two small matmuls per KV group (the fused CPU kernel is far slower here)
            G = self.H // self.Hkv
            qg = q.view(B, self.Hkv, G, self.hd)
            att = torch.softmax((qg @ keys.transpose(-1, -2)) * self.hd ** -0.5, dim=-1, dtype=torch.float32)
            o = (att.to(values.dtype) @ values).view(B, self.H, 1, self.hd)
        elif pos == 0:
            o = F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=True)
        else:  # a chunk after cached tokens: causal with an offset
            mask = torch.ones(T, pos + T, dtype=torch.bool, device=h.device).tril(pos)
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
        return self._o(attn, o.transpose(1, 2).reshape(B, T, self.H * self.hd))

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, pos: int, last_only: bool = True) -> torch.Tensor:
        """Logits for tokens ids (B, T) at positions pos..pos+T-1 (the last position's only, by default)."""
        B, T = ids.shape
        if pos + T > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} positions; asked for {pos + T}")
        c = self.controller
        if c is not None:
            c.begin_forward(B, T, pos)
        if self.per_token is not None:
            self.per_token.begin_forward(B, T, pos)
        if self._step is not None and T == 1 and last_only and self._steady():
            return self._run_compiled(ids, pos)
        with kernels.enabled(self.kernels):
            return self._forward(ids, pos, last_only)

    def _forward(self, ids: torch.Tensor, pos: int, last_only: bool) -> torch.Tensor:
        B, T = ids.shape
        c = self.controller
        x = self.model.model.embed_tokens(ids)
        f = None  # the last FFN's output, added to the residual together with the next norm
        for l, layer in enumerate(self.layers):
            x, h = self._add_norm(layer.input_layernorm, x, f)
            a = self._attention(l, layer.self_attn, h, pos)
            if l in self.monitored:
                c.record_attention(l, a)
            x, h = self._add_norm(layer.post_attention_layernorm, x, a)
            # the engine's FFN directly (what layer.mlp, its PrunableFFN, calls), else the model's own
            t0 = time.perf_counter() if self.time_ffn else 0.0
            if _hooked(layer.mlp):
                f = layer.mlp(h)
            elif c is not None:
                f = c.run_ffn(c.ffns[l], h)
            elif self.plain is not None:
                f = ffn_down(self.plain[l], ffn_intermediate(self.plain[l], h))
            else:
                f = layer.mlp(h)
            if self.time_ffn:
                self.ffn_seconds += time.perf_counter() - t0
        if c is not None:
            c.end_forward()
        if last_only:
            x, f = x[:, -1:], f[:, -1:]
        x = self._add_norm(self.model.model.norm, x, f)[1]
        head = self.model.lm_head
        return kernels.linear(x, head.weight, head.bias) if not _hooked(head) else head(x)

    # ------------------------------------------------------------------ the compiled step (opt-in)
    def _steady(self) -> bool:
        """This forward's plan needs nothing but weights and masks: no tracing, builds or captured signals."""
        c = self.controller
        if c is None:
            return True
        p = c.plan
        return (p.trace_w is None and p.build_rows is None and not p.align and not p.capture and not p.closing
                and p.late is None and (p.prune is None or p.prune is ROWS))

    def _run_compiled(self, ids: torch.Tensor, pos: int) -> torch.Tensor:
        c = self.controller
        p = c.plan if c is not None else None
        ffn = "dense" if p is None or p.prune is None else ("compact" if p.compact is not None else "masked")
        ks = tuple(p.compact) if ffn == "compact" else None
        rows = bool(p.compact_rows) if ffn == "compact" else False
        monitored = tuple(sorted(self.monitored))  # record_attention keeps them when the plan needs them
        self._pos.fill_(pos)
        M = c.M.layers if c is not None and ffn != "dense" else None
        logits, attn = self._step(ids, self._pos, self.k, self.v, M, ffn, ks, rows, monitored)
        for l, a in zip(monitored, attn):
            c.record_attention(l, a)
        if c is not None:
            c.end_forward()
        return logits

    def _compiled_step(self, ids, pos, kc, vc, M, ffn: str, ks, rows: bool, monitored: tuple):
        """One decode token over the whole preallocated cache (positions after `pos` masked out), every shape
        static; the FFN as the plan says (dense, masked, or the kept prefix ks[l], rows: each row's mask inside).
        Module hooks do not run here: in a steady step the engine's own (alignment, drift capture) have nothing
        to do, and the monitored attention outputs are returned for record_attention."""
        c = self.controller
        B = ids.shape[0]
        x = self.model.model.embed_tokens(ids)
        cos, sin = self.cos.index_select(0, pos), self.sin.index_select(0, pos)
        visible = self._arange <= pos
        G = self.H // self.Hkv
        attn_out = []
        for l, layer in enumerate(self.layers):
            at = layer.self_attn
            h = layer.input_layernorm.forward(x)  # .forward: module hooks do not run in a compiled step
            q, k, v = self._qkv(l, h)
            if hasattr(at, "q_norm"):
                q, k = at.q_norm(q), at.k_norm(k)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            kc[l][:, :, pos] = k
            vc[l][:, :, pos] = v
            qg = q.reshape(B, self.Hkv, G, self.hd)
            sc = (qg @ kc[l].transpose(-1, -2)) * self.hd ** -0.5
            att = torch.softmax(sc.float().masked_fill(~visible, float("-inf")), dim=-1)
            o = (att.to(vc[l].dtype) @ vc[l]).view(B, 1, self.H * self.hd)
            a = F.linear(o, at.o_proj.weight, at.o_proj.bias)
            if l in monitored:
                attn_out.append(a)
            x = x + a
            h = layer.post_attention_layernorm.forward(x)
            if c is None:
                x = x + layer.mlp.forward(h)
                continue
            w = self._weights[l]
            if ffn == "compact":
                x = x + ffn_compacted(w, h, ks[l], M[l] if rows else None)
            elif ffn == "masked":
                x = x + ffn_down(w, ffn_intermediate(w, h) * M[l][:, None, :])
            else:
                x = x + ffn_down(w, ffn_intermediate(w, h))
        return self.model.lm_head.forward(self.model.model.norm.forward(x)), attn_out

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """Greedy continuation (B, new_tokens) of prompts ids (B, T); no host sync inside the loop."""
        tok = self.forward(ids, 0)[:, -1].argmax(-1, keepdim=True)
        out = [tok]
        pos = ids.shape[1]
        for _ in range(new_tokens - 1):
            tok = self.forward(tok, pos)[:, -1].argmax(-1, keepdim=True)
            out.append(tok)
            pos += 1
        return torch.cat(out, dim=1)
