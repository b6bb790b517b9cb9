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
import hashlib
import time

import torch

from dart.engine.adapters import adapter_for, forward_input, restore_ffn
from dart.engine.allocation import auto_prune_fractions, keep_from_prune, list_keep, uniform_keep
from dart.engine.drift import DriftDetector
from dart.engine.ffn import PrunableFFN, permute_neurons
from dart.engine.masks import mean_mask, topk_mask
from dart.engine.onepass import OnePassScoring
from dart.engine.placement import Layered, Spans, layer_devices
from dart.engine.plan import IDLE, ROWS, Plan
from dart.engine.rows import RowBook
from dart.engine.schedule import DecodeSchedule
from dart.engine.scoring import scores, static_weight, vocab_projection_priors
from dart.engine.spec import EngineSpec
from dart.engine.stats import Statistics
from dart.errors import ConfigError


class Controller(DecodeSchedule, OnePassScoring, RowBook):
    def __init__(self, model, spec: EngineSpec, weight: torch.Tensor | None = None, fixed_masks: torch.Tensor | None = None,
                 global_scores: torch.Tensor | None = None):
        """fixed_masks: (L, I) bool in the original neuron order (strategy=static): every row of every request
        is masked with it from its first token; nothing is traced, built or re-traced, and unless
        spec.execution=masked the weights are compacted once, here, for every later single-sequence forward.
        global_scores: (L, I) a calibration-corpus ranking in the original neuron order, blended into every
        request's scores with weight spec.prior_mix."""
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
        # every layer's state lives on its FFN's device (a model spread over GPUs); scalars and the detector on
        # the first layer's (dart.engine.placement)
        self.spans = Spans(layer_devices(self.ffns))
        self.devices = self.spans.devices
        self.device, self.dtype = self.spans.home, ref.dtype
        self.stats = Statistics(self.spans, self.I, spec.statistic, alignment=spec.allocation == "auto")
        # physical -> original neuron index per layer (compaction reorders neurons in place)
        self.order = self._identity_order()
        self.moved: set[int] = set()  # layers whose neurons compaction reordered (host-side)
        self.fixed, self._fixed_prefix = None, None
        if fixed_masks is not None:
            if tuple(fixed_masks.shape) != (self.L, self.I):
                raise ConfigError(f"fixed masks must be (layers, neurons) = {(self.L, self.I)}, not {tuple(fixed_masks.shape)}")
            self.fixed = Layered.split(self.spans, fixed_masks.to(torch.bool))
            self._fixed_kept_mean = float(fixed_masks.sum(dim=-1).float().mean())
        self.global_scores = None
        if float(spec.prior_mix) > 0:
            if global_scores is None or tuple(global_scores.shape) != (self.L, self.I):
                raise ConfigError(f"strategy.prior_mix={spec.prior_mix} needs a calibration ranking of shape {(self.L, self.I)}")
            self.global_scores = Layered.split(self.spans, global_scores.to(torch.float32))
        if weight is not None:  # (L, I) static score factor, or the vocabulary priors, or None
            self.weight = Layered.split(self.spans, weight)
        else:
            self.weight = self._priors()
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
        self.kept_sum = self._layered_zeros(dtype=torch.float64)
        self.builds = 0  # row-builds (host)
        self.tokens_seen = torch.zeros((), dtype=torch.float64, device=self.device)
        self.tokens_traced = torch.zeros((), dtype=torch.float64, device=self.device)
        self.decode_signal_tokens = 0  # monitored vectors added to decode windows
        self.baseline_vectors = 0  # monitored vectors collected into baselines
        self.checks = 0
        self.build_seconds = 0.0
        self.triggers: list[dict] = []
        self.window_log: list[dict] = []  # every drift check: request, row, step, cosine, threshold
        self.peak_detector_bytes = 0
        self._first_alloc = True
        self._init_accounting()
        self._new_request(1)
        self.requests = 0
        if self.fixed is not None:  # the one mask build (the caller's) and the one compaction
            self.builds = 1
            self.kept_sum = self.fixed.map(lambda p: p.sum(dim=-1).to(torch.float64))
            self._maybe_compact()
            self._fixed_prefix = self.kept_prefix

    # ------------------------------------------------------------------ attach / detach
    def attach(self) -> "Controller":
        for layer, ffn in zip(self.layers, self.ffns):
            self.adapter.set_ffn(layer, ffn)
        self._hooks.append(self.model.register_forward_pre_hook(self._begin, with_kwargs=True))
        self._hooks.append(self.model.register_forward_hook(self._end, with_kwargs=True))
        self.model._dart_controller = self  # dart.engine.forcing finds the engine of a model here
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
        if getattr(self.model, "_dart_controller", None) is self:
            del self.model._dart_controller
        for l, (layer, ffn) in enumerate(zip(self.layers, self.ffns)):
            if l in self.moved:  # compaction reordered this layer's neurons: back to the original order
                permute_neurons(ffn.w, self.order[l].argsort().long())
            restore_ffn(self.adapter, layer, ffn.original)
        self.moved.clear()
        self.order = self._identity_order()

    def _identity_order(self) -> Layered:
        return Layered.build(self.spans, lambda n, d: torch.arange(self.I, dtype=torch.int32, device=d).repeat(n, 1))

    def _layered_zeros(self, *shape, dtype) -> Layered:
        return Layered.build(self.spans, lambda n, d: torch.zeros(n, *shape, dtype=dtype, device=d))

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
        probe = [float(t[:k].float().sum()) for t, k in [(f.w.w_down_t, 2) for f in self.ffns] + [(E, 4)]]  # once
        key = hashlib.sha1(repr((type(self.model).__name__, self.L, self.I, tuple(E.shape),
                                 [round(v, 6) for v in probe])).encode()).hexdigest()[:20]
        path = cache_root() / "priors" / f"{key}.pt"
        if path.is_file():
            pmax, pmean = torch.load(path, map_location="cpu")
        else:  # each layer's priors on its own device (the embedding moves there in chunks)
            rows = [vocab_projection_priors(f.w.w_down_t, E, self.spec.prior_chunk) for f in self.ffns]
            pmax, pmean = torch.stack([r[0].cpu() for r in rows]), torch.stack([r[1].cpu() for r in rows])
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save((pmax, pmean), tmp)
            tmp.replace(path)
        return Layered.split(self.spans, static_weight(self.spec.ranking, pmax, pmean).contiguous())

    # ------------------------------------------------------------------ request state
    def _new_request(self, batch: int) -> None:
        self.requests += 1
        self._reset_rows(batch)

    def _reset_rows(self, batch: int) -> None:
        """Fresh per-row state for `batch` rows: no statistics, masks or baseline (fixed masks: the fixed ones)."""
        self._fresh_row_lists(batch)
        self.B = batch
        self.step = 0
        self._first_alloc = True
        self.compacted = False
        self.kept_prefix: list[int] | None = None
        if self.fixed is None:
            self.stats.reset(batch)
            self.M = Layered.build(self.spans, lambda n, d: torch.ones(n, batch, self.I, dtype=self.dtype, device=d))
        else:  # every row holds the fixed mask (in the physical order) from its first token
            self.M = Layered(self.spans, [f.gather(1, o.long()).to(self.dtype)[:, None, :].repeat(1, batch, 1)
                                          for f, o in zip(self.fixed.parts, self.order.parts)])
            self._pending_compact = batch == 1 and self.spec.execution != "masked" and self._fixed_prefix is None
            self.compacted, self.kept_prefix = self._fixed_prefix is not None, self._fixed_prefix
        if self.detector is not None:
            self.detector.reset(batch)
        self._cache_key = None

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep (and repeat) the per-row state of rows `index` (B',) long: statistics, masks, detector, schedule.
        Chunked teacher forcing expands a traced context over its continuations with it."""
        idx = index.to(self.device)
        host = index.tolist()
        self.B = len(host)
        if self.fixed is None:
            self.stats.select_rows(idx)
        self.M = self.M.map(lambda p: p.index_select(1, idx.to(p.device)))
        self._select_row_lists(host, idx)
        if self.detector is not None:
            self.detector.select_rows(idx)
        if self.B != 1:
            self.compacted, self.kept_prefix = (self._fixed_prefix is not None, self._fixed_prefix) if self.fixed is not None else (False, None)
        self._cache_key = None

    def clear_all_rows(self) -> None:
        """Every row starts over (the state right after a drift trigger): no mask, no statistics, no baseline."""
        rows = torch.ones(self.B, dtype=torch.bool, device=self.device)
        self._fold(range(self.B))
        self.has_mask = [False] * self.B
        self.fresh = [True] * self.B
        self.n_window = [0] * self.B
        self.seg_m = [self.spec.retrace_len] * self.B
        self.det_done, self.det_count = [False] * self.B, [0] * self.B
        self.M.fill_(1)
        self.stats.clear_rows(rows)
        if self.detector is not None:
            self.detector.clear_rows(rows)
        self.compacted = False
        self._cache_key = None

    def _rows(self, flags: list[bool]) -> torch.Tensor:
        return torch.tensor(flags, dtype=torch.bool, device=self.device)

    def _plan_at(self, l: int):
        """The running plan with its tensors on layer l's device."""
        return self.plan.on(self.devices[l]) if self.spans.remote[l] else self.plan

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
        elif self._forced.capture:
            self.captured = self._signal() if self._attn else None
        self._attn.clear()
        self._h.clear()
        self.plan = IDLE

    def _signal(self) -> torch.Tensor:
        """The drift signal of this forward: the monitored layers' attention outputs, on the detector's device
        (moved once per forward where a monitored layer sits on another device)."""
        return torch.cat([self._attn[l].to(self.device) for l in self.monitored], dim=-1)

    def record_attention(self, layer: int, output: torch.Tensor) -> None:
        """The self-attention output of a monitored layer (the drift detector's signal) for this forward."""
        p = self.plan
        if p.capture or p.drift_trace_w is not None or p.drift_decode_rows is not None:
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
                self.stats.update_alignment(layer, self._h.pop(layer), output, self._plan_at(layer).trace_w,
                                            self.spec.auto.reference)
        return hook

    # ------------------------------------------------------------------ the FFN hot path
    def run_ffn(self, ffn: PrunableFFN, x: torch.Tensor) -> torch.Tensor:
        l = ffn.index
        p = self.plan.on(self.devices[l]) if self.spans.remote[l] else self.plan
        if p.compact is not None:  # a kept prefix; a batch's union also masks each row inside it (dart.engine.union)
            return ffn.compacted(x, p.compact[l], self.M[l] if p.compact_rows else None)
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

    # ------------------------------------------------------------------ masks
    def _keep(self, rows: torch.Tensor | None = None):
        if self.spec.budget == "effective":
            return self._budget_keep(rows.tolist() if rows is not None else [True] * self.B)  # (B, L)
        if self.fixed_keep is not None:
            return self.fixed_keep
        p = auto_prune_fractions(self.stats.layer_alignment(), self.spec.sparsity, self.spec.auto)
        keep = keep_from_prune(p, self.I)  # (B, L)
        if self.spec.protocol == "compat" and self._first_alloc:
            # the published quirk: the first allocation of a request builds layer 0 with the LAST layer's count
            keep = torch.cat([keep[:, -1:], keep[:, 1:]], dim=1)
        return keep

    @torch.no_grad()
    def _build(self, rows: torch.Tensor, layer: int | None = None) -> None:
        """Masks for rows (B,) bool: of every layer (layer None) or of one layer (one-pass builds)."""
        t0 = time.perf_counter()
        if layer is None:
            self._fold([b for b, f in enumerate(rows.tolist()) if f])
        keep_all = None if self.spec.mask_rule == "mean" else self._keep(rows)
        for sl, dev in self.spans.within(layer):  # once per device group (one group on a single device)
            r = rows.to(dev)
            sc = scores(self.spec.ranking, self.stats.base(sl), None if self.weight is None else self.weight.view(sl))
            if self.global_scores is not None:  # GLASS-style blend with a calibration ranking (scales made comparable)
                lam = float(self.spec.prior_mix)
                g = self.global_scores.view(sl).gather(1, self.order.view(sl).long())  # the physical neuron order
                own = sc / sc.mean(dim=-1, keepdim=True).clamp_min(1e-30)
                sc = (1 - lam) * own + lam * (g / g.mean(dim=-1, keepdim=True).clamp_min(1e-30))[:, None, :]
            if keep_all is None:
                mask = mean_mask(sc)
            else:
                keep = keep_all[sl] if isinstance(keep_all, list) else keep_all[:, sl].to(dev)
                mask = topk_mask(sc, keep)
            M = self.M.view(sl)
            M.copy_(torch.where(r[None, :, None], mask.to(self.dtype), M))
            self.kept_sum.view(sl).add_((mask.sum(dim=-1).to(torch.float64) * r[None, :]).sum(dim=1))
            self._note_kept(r, sl, mask)
        if layer is None or layer == self.L - 1:
            self._first_alloc = False
        self._pending_compact = self.B == 1 and self.spec.execution != "masked"
        self.build_seconds += time.perf_counter() - t0

    @torch.no_grad()
    def _maybe_compact(self) -> None:
        """Move a single sequence's kept neurons to a contiguous prefix of every layer (in place); a batch's:
        the union of its rows' kept sets (dart.engine.union)."""
        from dart.engine import union

        if self.B > 1:
            union.maybe_union(self)
            return
        if not getattr(self, "_pending_compact", False) or not self.has_mask[0]:
            return
        self._pending_compact = False
        union.clear(self)
        t0 = time.perf_counter()
        counts = []
        for sl, _, M in self.M.groups():  # per device group: its layers' kept neurons first, each part in order
            keep = M[:, 0] > 0.5  # (n, I)
            order = (~keep).to(torch.int8).argsort(dim=-1, stable=True)
            for i, l in enumerate(range(sl.start, sl.stop)):
                o = order[i]
                extra = [self.order[l]] + ([self.weight[l]] if self.weight is not None else [])
                permute_neurons(self.ffns[l].w, o, extra)
                self.moved.add(l)
                self.M[l, 0] = self.M[l, 0].index_select(0, o)
                self.stats.A[l] = self.stats.A[l].index_select(-1, o)
            counts.append(keep.sum(dim=-1))
        self.kept_prefix = [int(k) for c in counts for k in c.tolist()]
        self.compacted = True
        self._cache_key = None
        self.build_seconds += time.perf_counter() - t0

    # ------------------------------------------------------------------ reporting
    def masks(self) -> torch.Tensor:
        """Current masks in the ORIGINAL neuron order, (L, B, I) bool."""
        parts = []
        for (sl, _, M), o in zip(self.M.groups(), self.order.parts):
            idx = o.long()[:, None, :].expand(M.shape)
            parts.append(torch.zeros(M.shape, dtype=torch.bool, device=M.device).scatter_(-1, idx, M > 0.5))
        return Layered(self.spans, parts).gather()

    def state_bytes(self) -> dict[str, int]:
        parts = {
            "statistics": self.stats.nbytes(),
            "priors": 0 if self.weight is None else self.weight.nbytes(),
            "masks": self.M.nbytes(),
            "neuron_order": self.order.nbytes(),
            "detector": 0 if self.detector is None else self.detector.nbytes(),
        }
        parts["total"] = sum(parts.values())
        parts["detector_peak"] = self.peak_detector_bytes
        return parts
