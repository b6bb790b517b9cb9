"""A lean greedy decode loop for Llama-family models (gpt-fast style): the model's own weights, a preallocated KV
cache, no per-token Python beyond one call per layer module.

Why: in transformers' `generate` the per-token overhead (cache objects, mask building, logits processors, output
dataclasses) is a large share of a small model's decode step on CPU, and it does not shrink when the FFN does, so
it caps the speed-up that compacted FFNs can show. This loop runs the same modules (norms, projections, and
`layer.mlp`, i.e. the engine's PrunableFFN when a strategy is attached) with the KV cache as two tensors.

It drives the engine directly: `Controller.begin_forward` before each forward, `record_attention` for the drift
detector's monitored layers and `end_forward` after, so tracing, masking, compaction and re-tracing behave as in
`model.generate` (tested: same tokens and logits within float tolerance).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dart.errors import ConfigError

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


class LeanDecoder:
    def __init__(self, model, max_len: int, batch: int = 1, controller=None):
        cfg = model.config
        if cfg.model_type not in SUPPORTED:
            raise ConfigError(f"the lean decode loop supports model types {', '.join(SUPPORTED)}, not "
                              f"{cfg.model_type!r}; use transformers' generate (bench loop=hf) for it")
        self.model, self.controller = model, controller
        self.layers = list(model.model.layers)
        self.H, self.Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.H
        w = model.model.embed_tokens.weight
        L, B = len(self.layers), batch
        self.k = torch.zeros(L, B, self.Hkv, max_len, self.hd, dtype=w.dtype, device=w.device)
        self.v = torch.zeros_like(self.k)
        pos = torch.arange(max_len, device=w.device)[None]
        cos, sin = model.model.rotary_emb(w[:1], pos)  # (1, max_len, hd): the model's own rope (scaling included)
        self.cos, self.sin = cos[0].to(w.dtype), sin[0].to(w.dtype)
        self.max_len = max_len
        self.monitored = set(controller.monitored) if controller is not None else set()

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    def _attention(self, l: int, attn, h: torch.Tensor, pos: int) -> torch.Tensor:
        B, T, _ = h.shape
        q = attn.q_proj(h).view(B, T, self.H, self.hd)
        k = attn.k_proj(h).view(B, T, self.Hkv, self.hd)
        v = attn.v_proj(h).view(B, T, self.Hkv, self.hd)
        if hasattr(attn, "q_norm"):  # qwen3
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        cos, sin = self.cos[pos:pos + T], self.sin[pos:pos + T]
        q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        self.k[l, :, :, pos:pos + T] = k
        self.v[l, :, :, pos:pos + T] = v
        keys, values = self.k[l, :, :, :pos + T], self.v[l, :, :, :pos + T]
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
        return attn.o_proj(o.transpose(1, 2).reshape(B, T, self.H * self.hd))

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, pos: int, last_only: bool = True) -> torch.Tensor:
        """Logits for tokens ids (B, T) at positions pos..pos+T-1 (the last position's only, by default)."""
        B, T = ids.shape
        if pos + T > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} positions; asked for {pos + T}")
        c = self.controller
        if c is not None:
            c.begin_forward(B, T, pos)
        x = self.model.model.embed_tokens(ids)
        for l, layer in enumerate(self.layers):
            a = self._attention(l, layer.self_attn, layer.input_layernorm(x), pos)
            if l in self.monitored:
                c.record_attention(l, a)
            x = x + a
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        if c is not None:
            c.end_forward()
        x = self.model.model.norm(x[:, -1:] if last_only else x)
        return self.model.lm_head(x)

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
