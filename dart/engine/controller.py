"""The engine's controller: attaches to a Hugging Face causal LM and runs the schedule of method.md section 2.

Per request (a forward with an empty KV cache starts one; every plain `model(ids)` call is one):
    forwards s < m          trace (dense): statistics and the detector's baseline accumulate
    forward  s == m         build the masks (every layer's statistics are complete), prune from here on
    forwards s > m          prune; every W tokens the drift detector compares the window with its baseline;
                            a trigger drops that row's mask and re-traces it for m forwards (s restarts at 0)
    forward  >= r           (release step, optional) run dense again
m = 0 (protocol=compat) traces, builds and prunes the prefill in the same pass, layer by layer.

Each row of a batch has its own statistics, masks and drift state; the schedule itself is host-side Python
(which row is in which phase is known without looking at the device), so the hot path never syncs. The only
device-to-host reads are at mask builds that compact (k per layer) and at drift checks (one bool per row,
every W tokens).

Scoring (lm-eval) passes the whole request in one forward; `score()` gives the engine each row's prompt
length, so statistics come from the prompt only and the mask applies from the positions that predict the
continuation (protocol=causal), or everywhere (compat). Depth-aware allocation needs all layers before any mask,
so it runs a trace pass and then a pruned pass.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from typing import Any

import torch

from dart.engine.adapters import adapter_for, forward_input, restore_ffn
from dart.engine.allocation import auto_prune_fractions, keep_from_prune, list_keep, uniform_keep
from dart.engine.drift import DriftDetector
from dart.engine.ffn import PrunableFFN, permute_neurons
from dart.engine.masks import mean_mask, topk_mask
from dart.engine.scoring import scores, static_weight, vocab_projection_priors
from dart.engine.spec import EngineSpec
from dart.engine.stats import Statistics, ema_weights
from dart.errors import ConfigError

ROWS = "rows"  # prune every position of the rows that hold a mask


@dataclasses.dataclass
class Plan:
    trace_w: torch.Tensor | None = None  # (B, T) statistic weights, None = no tracing
    decay: torch.Tensor | None = None  # (B,) multiplier of the old statistic (None = 1)
    build_rows: torch.Tensor | None = None  # (B,) rows whose masks are built inside each layer (one pass)
    prune: Any = None  # None | ROWS | (B, T) bool positions
    compact: list[int] | None = None  # kept prefix per layer (a single, compacted sequence)
    drift_trace_w: torch.Tensor | None = None  # (B, T) signal weights while tracing
    drift_decode_rows: torch.Tensor | None = None  # (B,) rows adding to their decode window
    align: bool = False


IDLE = Plan()


class Controller:
    def __init__(self, model, spec: EngineSpec, weight: torch.Tensor | None = None, fixed_masks: torch.Tensor | None = None):
        """fixed_masks: (L, I) bool in the original neuron order (strategy=static): every row of every request
        is masked with it from its first token; nothing is traced, built or re-traced, and unless
        spec.execution=masked the weights are compacted once, here, for every later single-sequence forward."""
        self.model = model
        self.adapter = adapter_for(model)
        self.layers = self.adapter.layers(model)
        self.L = len(self.layers)
        self.spec = spec.validate(self.L)
        self.ffns: list[PrunableFFN] = []
        for i, layer in enumerate(self.layers):
            original = self.adapter.ffn(layer)
            self.ffns.append(PrunableFFN(original, self.adapter.weights(original), i, self))
        self.I = self.ffns[0].width
        if any(f.width != self.I for f in self.ffns):
            raise ConfigError("layers of different FFN widths are not supported")
        ref = self.ffns[0].w.w_down_t
        self.device, self.dtype = ref.device, ref.dtype
        self.stats = Statistics(self.L, self.I, spec.statistic, self.device, alignment=spec.allocation == "auto")
        # physical -> original neuron index per layer (compaction reorders neurons in place)
        self.order = torch.arange(self.I, dtype=torch.int32, device=self.device).repeat(self.L, 1)
        self.fixed, self._fixed_prefix = None, None
        if fixed_masks is not None:
            if tuple(fixed_masks.shape) != (self.L, self.I):
                raise ConfigError(f"fixed masks must be (layers, neurons) = {(self.L, self.I)}, not {tuple(fixed_masks.shape)}")
            self.fixed = fixed_masks.to(self.device, torch.bool)
        self.weight = weight if weight is not None else self._priors()  # (L, I) static score factor or None
        self.fixed_keep = None
        if spec.mask_rule == "topk" and spec.allocation == "uniform":
            self.fixed_keep = uniform_keep(self.L, self.I, spec.sparsity)
        elif spec.mask_rule == "topk" and spec.allocation == "list":
            self.fixed_keep = list_keep(list(spec.layer_keep), self.I)
        self.detector = None
        self.monitored: list[int] = []
        if spec.drift.enabled:
            self.monitored = sorted({l % self.L for l in spec.drift.layers})
            width = sum(self._attn_width(self.layers[l]) for l in self.monitored)
            self.detector = DriftDetector(spec.drift, width, self.device)
        self.plan = IDLE
        self._paused = False
        self._forced: Plan | None = None
        self._attn: dict[int, torch.Tensor] = {}
        self._h: dict[int, torch.Tensor] = {}
        self._hooks: list = []
        # run-level accounting (device scalars; read once in summary())
        self.requests = 0
        self.kept_sum = torch.zeros(self.L, dtype=torch.float64, device=self.device)
        self.builds = 0  # row-builds (host)
        self.tokens_seen = torch.zeros((), dtype=torch.float64, device=self.device)
        self.tokens_traced = torch.zeros((), dtype=torch.float64, device=self.device)
        self.decode_signal_tokens = 0
        self.checks = 0
        self.build_seconds = 0.0
        self.triggers: list[dict] = []
        self.window_log: list[dict] = []  # every drift check: request, row, step, cosine, threshold
        self.peak_detector_bytes = 0
        self._new_request(1)
        self.requests = 0
        if self.fixed is not None:  # the one mask build (the caller's) and the one compaction
            self.builds = 1
            self.kept_sum = self.fixed.sum(dim=-1).to(torch.float64)
            self._maybe_compact()
            self._fixed_prefix = self.kept_prefix

    # ------------------------------------------------------------------ attach / detach
    def attach(self) -> "Controller":
        for layer, ffn in zip(self.layers, self.ffns):
            self.adapter.set_ffn(layer, ffn)
        self._hooks.append(self.model.register_forward_pre_hook(self._begin, with_kwargs=True))
        self._hooks.append(self.model.register_forward_hook(self._end, with_kwargs=True))
        for l in self.monitored:
            self._hooks.append(self.adapter.attention(self.layers[l]).register_forward_hook(self._attn_hook(l)))
        if self.stats.alignment:
            for l, layer in enumerate(self.layers):
                self._hooks.append(self.adapter.residual_in(layer).register_forward_pre_hook(self._h_hook(l)))
                added = self.adapter.ffn_added(layer)
                if added is not None:
                    self._hooks.append(added.register_forward_hook(self._o_hook(l)))
        return self

    @torch.no_grad()
    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for l, (layer, ffn) in enumerate(zip(self.layers, self.ffns)):
            if not torch.equal(self.order[l], torch.arange(self.I, dtype=torch.int32, device=self.device)):
                permute_neurons(ffn.w, self.order[l].argsort().long())  # back to the original order
            restore_ffn(self.adapter, layer, ffn.original)
        self.order = torch.arange(self.I, dtype=torch.int32, device=self.device).repeat(self.L, 1)

    def _attn_width(self, layer) -> int:
        attn = self.adapter.attention(layer)
        for name in ("o_proj", "c_proj", "dense"):
            mod = getattr(attn, name, None)
            if mod is not None:
                w = mod.weight
                return w.shape[0] if isinstance(mod, torch.nn.Linear) else w.shape[1]
        return self.model.get_input_embeddings().weight.shape[1]

    # ------------------------------------------------------------------ priors
    @torch.no_grad()
    def _priors(self) -> torch.Tensor | None:
        if not self.spec.needs_priors:
            return None
        from dart.paths import cache_root

        E = self.adapter.embedding(self.model)
        probe = torch.stack([f.w.w_down_t[:2].float().sum() for f in self.ffns] + [E[:4].float().sum()])
        key = hashlib.sha1(repr((type(self.model).__name__, self.L, self.I, tuple(E.shape),
                                 [round(v, 6) for v in probe.tolist()])).encode()).hexdigest()[:20]
        path = cache_root() / "priors" / f"{key}.pt"
        if path.is_file():
            pmax, pmean = torch.load(path, map_location=self.device)
        else:
            rows = [vocab_projection_priors(f.w.w_down_t, E, self.spec.prior_chunk) for f in self.ffns]
            pmax, pmean = torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save((pmax.cpu(), pmean.cpu()), tmp)
            tmp.replace(path)
        return static_weight(self.spec.ranking, pmax.to(self.device), pmean.to(self.device)).contiguous()

    # ------------------------------------------------------------------ request state
    def _new_request(self, batch: int) -> None:
        self.requests += 1
        self.B = batch
        self.step = 0
        self.restart = [0] * batch
        self.has_mask = [False] * batch
        self.fresh = [True] * batch
        self.n_window = [0] * batch
        self.compacted = False
        self.kept_prefix: list[int] | None = None
        if self.fixed is None:
            self.stats.reset(batch)
            self.M = torch.ones(self.L, batch, self.I, dtype=self.dtype, device=self.device)
        else:  # every row holds the fixed mask (in the physical order) from its first token
            self.M = self.fixed.gather(1, self.order.long()).to(self.dtype)[:, None, :].repeat(1, batch, 1)
            self.has_mask = [True] * batch
            self._pending_compact = batch == 1 and self.spec.execution != "masked" and self._fixed_prefix is None
            self.compacted, self.kept_prefix = self._fixed_prefix is not None, self._fixed_prefix
        if self.detector is not None:
            self.detector.reset(batch)
        self._cache_key = None

    def _rows(self, flags: list[bool]) -> torch.Tensor:
        return torch.tensor(flags, dtype=torch.bool, device=self.device)

    # ------------------------------------------------------------------ hooks
    @contextlib.contextmanager
    def paused(self):
        """Run the model dense (no tracing, masks or drift checks) inside the block: the dense reference."""
        before, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = before

    def _begin(self, module, args, kwargs):
        if self._paused:
            self.plan = IDLE
            return None
        x = forward_input(args, kwargs)
        cache = kwargs.get("past_key_values")
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        mask = kwargs.get("attention_mask")
        self.begin_forward(x.shape[0], x.shape[1], past, mask)
        return None

    def begin_forward(self, B: int, T: int, past: int, attention_mask: torch.Tensor | None = None) -> None:
        """Start one forward of B rows and T new tokens after `past` cached ones (a decode loop that does not
        call the model's forward, such as dart.engine.lean, calls this, record_attention and end_forward)."""
        if self._paused:
            self.plan = IDLE
            return
        if self._forced is not None:
            self.plan = self._forced
            return
        if past == 0:
            self._new_request(B)
        elif B != self.B:
            raise RuntimeError(f"batch size changed from {self.B} to {B} inside one request")
        mask = attention_mask
        valid = mask[:, -T:].to(torch.float32) if torch.is_tensor(mask) and mask.dim() == 2 else None
        self.plan = self._decode_plan(T, valid)

    def _end(self, module, args, kwargs, output):
        self.end_forward()
        return None

    def end_forward(self) -> None:
        if self._paused:
            return
        if self._forced is None:
            self._after_decode_forward()
        self._attn.clear()
        self._h.clear()
        self.plan = IDLE

    def record_attention(self, layer: int, output: torch.Tensor) -> None:
        """The self-attention output of a monitored layer (the drift detector's signal) for this forward."""
        if self.plan.drift_trace_w is not None or self.plan.drift_decode_rows is not None:
            self._attn[layer] = output

    def _attn_hook(self, layer: int):
        def hook(module, args, output):
            self.record_attention(layer, output[0] if isinstance(output, tuple) else output)
        return hook

    def _h_hook(self, layer: int):
        def hook(module, args):
            if self.plan.align:
                self._h[layer] = args[0]
        return hook

    def _o_hook(self, layer: int):
        def hook(module, args, output):
            if self.plan.align and layer in self._h:
                self.stats.update_alignment(layer, self._h.pop(layer), output, self.plan.trace_w, self.spec.auto.reference)
        return hook

    # ------------------------------------------------------------------ the FFN hot path
    def run_ffn(self, ffn: PrunableFFN, x: torch.Tensor) -> torch.Tensor:
        p, l = self.plan, ffn.index
        if p.compact is not None:
            k = p.compact[l]
            return ffn.down(ffn.intermediate(x, k), k)
        a = ffn.intermediate(x)
        if p.trace_w is not None:
            self.stats.update(l, a, p.trace_w, p.decay)
        if p.build_rows is not None:
            self._build(p.build_rows, layer=l)
        if p.prune is ROWS:
            a = a * self.M[l][:, None, :]
        elif p.prune is not None:
            a = torch.where(p.prune[..., None], a * self.M[l][:, None, :], a)
        out = ffn.down(a)
        if p.align and self.adapter.ffn_added(self.layers[l]) is None and l in self._h:
            self.stats.update_alignment(l, self._h.pop(l), out, p.trace_w, self.spec.auto.reference)
        return out

    # ------------------------------------------------------------------ decoding schedule
    def _phases(self) -> tuple[list[bool], list[bool], list[bool], bool]:
        if self.fixed is not None:  # fixed masks: nothing is ever traced or built
            return [False] * self.B, [False] * self.B, [False] * self.B, False
        m, r = self.spec.masking_step, self.spec.release_step
        released = r is not None and self.step >= r
        local = [self.step - s for s in self.restart]
        tracing = [not released and (s < m or (m == 0 and s == 0)) for s in local]
        build_now = [not released and m >= 1 and s == m for s in local]
        inlayer = [not released and m == 0 and s == 0 for s in local]
        return tracing, build_now, inlayer, released

    def _decode_plan(self, T: int, valid: torch.Tensor | None) -> Plan:
        tracing, build_now, inlayer, released = self._phases()
        if any(build_now):
            self.builds += sum(build_now)
            self._build(self._rows(build_now))
            for b, flag in enumerate(build_now):
                if flag:
                    self.has_mask[b] = True
        if any(inlayer) and self.spec.global_build:
            raise ConfigError(
                "strategy.allocation=auto needs every layer's statistics before any mask, so it cannot mask the "
                "prefill it traces (masking_step=0) during generation; use masking_step >= 1"
            )
        masked = [self.has_mask[b] and not released and not tracing[b] for b in range(self.B)]
        self._maybe_compact()
        key = (T, tuple(tracing), tuple(masked), tuple(inlayer), released, self.compacted, valid is None)
        if key == self._cache_key and not any(tracing) and not any(inlayer):
            plan = self._cached_plan  # steady decoding: nothing changed, no new tensors
        else:
            plan = Plan()
            if any(tracing):
                w = self._rows(tracing).to(torch.float32)[:, None].expand(self.B, T)
                if valid is not None:
                    w = w * valid
                plan.trace_w = w.contiguous()
                if self.spec.statistic == "ema":
                    plan.trace_w, plan.decay = ema_weights(plan.trace_w, float(self.spec.ema_decay), self._rows(self.fresh))
                plan.align = self.stats.alignment
                if self.detector is not None:
                    plan.drift_trace_w = (w > 0).to(torch.float32)
            if any(inlayer):
                plan.build_rows = self._rows(inlayer)
                self.builds += sum(inlayer)
            if any(masked) or any(inlayer):
                plan.prune = ROWS
            if self.detector is not None and any(masked):
                plan.drift_decode_rows = self._rows(masked)
            if self.B == 1 and masked[0] and self.compacted:
                plan.compact = self.kept_prefix
            self._cache_key, self._cached_plan = key, plan
        if plan.trace_w is not None:
            self.tokens_traced += (plan.trace_w > 0).sum()
            for b, flag in enumerate(tracing):
                if flag:
                    self.fresh[b] = False
        self.tokens_seen += float(self.B * T) if valid is None else valid.sum()
        return plan

    def _after_decode_forward(self) -> None:
        p = self.plan
        tracing, _, inlayer, _ = self._phases()
        for b, flag in enumerate(inlayer):
            if flag:
                self.has_mask[b] = True
        det = self.detector
        if det is not None and self._attn:
            v = torch.cat([self._attn[l] for l in self.monitored], dim=-1)
            if p.drift_trace_w is not None:
                det.collect_trace(v, p.drift_trace_w)
                self.peak_detector_bytes = max(self.peak_detector_bytes, det.nbytes())
            m = self.spec.masking_step
            ending = [tracing[b] and (self.step - self.restart[b] == max(m, 1) - 1) for b in range(self.B)]
            if any(ending):
                det.finalize(self._rows(ending))
            if p.drift_decode_rows is not None:
                det.collect_decode(v, p.drift_decode_rows)
                self.decode_signal_tokens += self.B
                due = []
                for b in range(self.B):
                    decoding = self.has_mask[b] and not tracing[b]
                    self.n_window[b] += int(decoding)
                    due.append(decoding and self.n_window[b] == det.W)
                if any(due):
                    self._check(self._rows(due), due)
            if not any(self._phases()[0]) and det.windows.shape[1]:
                det.drop_windows()
        self.step += 1

    def _check(self, rows: torch.Tensor, due: list[bool]) -> None:
        cos, fired = self.detector.check(rows)
        self.checks += sum(due)
        values = torch.stack([fired.float(), cos, self.detector.tau]).tolist()  # one read per window
        for b, flag in enumerate(due):
            if not flag:
                continue
            self.n_window[b] = 0
            entry = {"request": self.requests, "row": b, "step": self.step, "cosine": values[1][b], "threshold": values[2][b]}
            self.window_log.append(entry)
            if values[0][b] > 0.5:
                self.triggers.append(entry)
                self._retrace(b)

    def _retrace(self, b: int) -> None:
        """Drop row b's mask and statistics; it runs dense and re-traces from the next forward."""
        row = self._rows([i == b for i in range(self.B)])
        self.restart[b] = self.step + 1
        self.has_mask[b] = False
        self.fresh[b] = True
        self.M[:, b] = 1
        self.stats.clear_rows(row)
        self.detector.clear_rows(row)
        if self.B == 1:
            self.compacted = False
        self._cache_key = None

    # ------------------------------------------------------------------ masks
    def _keep(self):
        if self.fixed_keep is not None:
            return self.fixed_keep
        p = auto_prune_fractions(self.stats.layer_alignment(), self.spec.sparsity, self.spec.auto)
        return keep_from_prune(p, self.I)  # (B, L)

    @torch.no_grad()
    def _build(self, rows: torch.Tensor, layer: int | None = None) -> None:
        """Masks for rows (B,) bool: of every layer (layer None) or of one layer (one-pass builds)."""
        t0 = time.perf_counter()
        sl = slice(None) if layer is None else slice(layer, layer + 1)
        base = self.stats.base()[sl]
        weight = None if self.weight is None else self.weight[sl]
        sc = scores(self.spec.ranking, base, weight)
        if self.spec.mask_rule == "mean":
            mask = mean_mask(sc)
        else:
            keep = self._keep()
            keep = keep[sl] if isinstance(keep, list) else keep[:, sl]
            mask = topk_mask(sc, keep)
        self.M[sl] = torch.where(rows[None, :, None], mask.to(self.dtype), self.M[sl])
        self.kept_sum[sl] += (mask.sum(dim=-1).to(torch.float64) * rows[None, :]).sum(dim=1)
        self._pending_compact = self.B == 1 and self.spec.execution != "masked"
        self.build_seconds += time.perf_counter() - t0

    @torch.no_grad()
    def _maybe_compact(self) -> None:
        """Move a single sequence's kept neurons to a contiguous prefix of every layer (in place)."""
        if not getattr(self, "_pending_compact", False) or self.B != 1 or not self.has_mask[0]:
            return
        self._pending_compact = False
        t0 = time.perf_counter()
        keep = self.M[:, 0] > 0.5  # (L, I)
        order = (~keep).to(torch.int8).argsort(dim=-1, stable=True)  # kept first, each group in order
        for l, ffn in enumerate(self.ffns):
            o = order[l]
            extra = [self.order[l]] + ([self.weight[l]] if self.weight is not None else [])
            permute_neurons(ffn.w, o, extra)
            self.M[l, 0] = self.M[l, 0].index_select(0, o)
            self.stats.A[l] = self.stats.A[l].index_select(-1, o)
        self.kept_prefix = keep.sum(dim=-1).tolist()
        self.compacted = True
        self._cache_key = None
        self.build_seconds += time.perf_counter() - t0

    # ------------------------------------------------------------------ scoring (one forward per request)
    @torch.no_grad()
    def score(self, model, input_ids: torch.Tensor, prompt_len: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw):
        """Logits of one scoring forward over requests (B, T) whose first prompt_len[b] tokens are the prompt.

        causal: statistics from the prompt (and the next m-1 positions), masks from position prompt_len-1+m-1
        on, i.e. on the positions that predict the continuation. compat: trace and prune every position.
        """
        B, T = input_ids.shape
        valid = (attention_mask[:, -T:] if attention_mask is not None else torch.ones_like(input_ids)).to(torch.float32)
        if self.fixed is not None:  # the fixed masks on every position of every row: nothing to trace
            self._new_request(B)
            self.tokens_seen += valid.sum()
            self._forced = Plan(prune=ROWS, compact=self.kept_prefix if B == 1 and self.compacted else None)
            try:
                return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kw).logits
            finally:
                self._forced = None
        pos = torch.arange(T, device=input_ids.device)[None, :]
        prompt_len = prompt_len.to(input_ids.device)[:, None]
        m = self.spec.masking_step
        if self.spec.protocol == "compat":
            trace = valid.clone()
            prune = valid > 0
            prefill = valid
        else:
            # GRIFFIN's classification mode (method.md 6): the last context position predicts the first
            # continuation token, so it is pruned and the statistics come from the context before it
            prompt_len = (prompt_len - 1).clamp_min(1)
            end = prompt_len + (m - 1)
            trace = valid * (pos < end)
            prune = (valid > 0) & (pos >= end)
            prefill = valid * (pos < prompt_len)
        self._new_request(B)
        decay = None
        if self.spec.statistic == "ema":
            d = float(self.spec.ema_decay)
            w0, _ = ema_weights(prefill, d, torch.ones(B, dtype=torch.bool, device=self.device))
            steps = (pos - prompt_len + 1).clamp_min(0)  # decode step index k of the traced positions after the prompt
            tail = (1 - d) * torch.pow(torch.tensor(d, device=self.device), (m - 1 - steps).clamp_min(0))
            lead = d ** max(m - 1, 0)
            trace = torch.where(prefill > 0, w0 * lead, tail * trace)  # compat: the whole request is the prefill
            decay = torch.zeros(B, device=self.device)
        self.tokens_seen += valid.sum()
        self.tokens_traced += (trace > 0).sum()
        all_rows = torch.ones(B, dtype=torch.bool, device=self.device)
        self.builds += B
        kwargs = dict(attention_mask=attention_mask, use_cache=False, **kw)
        try:
            if self.spec.global_build:
                self._forced = Plan(trace_w=trace, decay=decay, align=self.stats.alignment)
                model(input_ids=input_ids, **kwargs)
                self._build(all_rows)
                self._forced = Plan(prune=prune)
            else:
                self._forced = Plan(trace_w=trace, decay=decay, build_rows=all_rows, prune=prune)
            out = model(input_ids=input_ids, **kwargs)
        finally:
            self._forced = None
        self.has_mask = [True] * B
        return out.logits

    # ------------------------------------------------------------------ reporting
    def masks(self) -> torch.Tensor:
        """Current masks in the ORIGINAL neuron order, (L, B, I) bool."""
        out = torch.zeros(self.L, self.B, self.I, dtype=torch.bool, device=self.device)
        idx = self.order.long()[:, None, :].expand(self.L, self.B, self.I)
        return out.scatter_(-1, idx, self.M > 0.5)

    def state_bytes(self) -> dict[str, int]:
        parts = {
            "statistics": self.stats.nbytes(),
            "priors": 0 if self.weight is None else self.weight.numel() * self.weight.element_size(),
            "masks": self.M.numel() * self.M.element_size(),
            "neuron_order": self.order.numel() * self.order.element_size(),
            "detector": 0 if self.detector is None else self.detector.nbytes(),
        }
        parts["total"] = sum(parts.values())
        parts["detector_peak"] = self.peak_detector_bytes
        return parts
