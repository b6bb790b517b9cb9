"""The engine's controller: owns every piece of engine state of a model it is attached to, and offers the API the
drivers use (dart.engine.stepper token by token, dart.engine.forcing in chunks, dart.engine.onepass in one pass,
dart.bench.lean's decode loop).

State, by owner:
    rows        list[Row] (dart.engine.rows): the schedule's and the accounting's host state of every row
    schedule    Schedule (dart.engine.schedule): the rules, written once
    stats       Statistics: (L, B, I) fp32 accumulators (+ alignment sums for depth-aware allocation)
    M           (L, B, I) masks in the PHYSICAL neuron order (compaction reorders neurons in place; `order` maps
                physical -> original); all ones where a row holds no mask
    detector    DriftDetector: the baseline and window sums per row (device)
    tally       Tally (dart.engine.tally): effective-sparsity counts and the effective budget
    union       Union (dart.engine.union): the batch's union compaction
    stepper     Stepper (dart.engine.stepper): the token-by-token driver (plans between forwards)
    book        Bookkeeping (dart.engine.bookkeeping): what a forward's rules do to the rows, the detector and counts
    counts      Counters (dart.engine.counters): the run's accounting (requests, builds, checks, tokens, logs)
No other module assigns the controller's attributes (drivers report through count, book, masks_built, compaction,
restore_rows). Per-layer tensors live on their layer's device (dart.engine.placement). A forward runs one Plan
(dart.engine.plan): the stepper's, or one a driver forces with `forced(plan)`.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from dart.engine.adapters import adapter_for, forward_input
from dart.engine.allocation import fixed_keep
from dart.engine.bookkeeping import Bookkeeping
from dart.engine.counters import Counters
from dart.engine.drift import DriftDetector
from dart.engine.ffn import PrunableFFN, move_neurons, permute_neurons
from dart.engine.masks import build_masks, original_masks
from dart.engine.patch import Patch, attached
from dart.engine.placement import Layered, Spans, layer_devices
from dart.engine.plan import IDLE, ROWS, Plan
from dart.engine.schedule import Schedule
from dart.engine.scoring import ranking_weight
from dart.engine.spec import EngineSpec
from dart.engine.stats import Statistics
from dart.engine.stepper import Stepper
from dart.engine.tally import Tally
from dart.engine.union import Union
from dart.errors import ConfigError


def controller_of(model) -> "Controller | None":
    """The engine controller attached to `model` (None: dense, a per-token method, or nothing attached)."""
    return attached(model, "controller")


class Controller:
    def __init__(self, model, spec: EngineSpec, weight: torch.Tensor | None = None, fixed_masks: torch.Tensor | None = None,
                 global_scores: torch.Tensor | None = None):
        """fixed_masks: (L, I) bool in the original neuron order (strategy=static): every row of every request is
        masked with it from its first token; nothing is traced, built or re-traced, and unless spec.execution=masked
        the weights are compacted once, here. global_scores: (L, I) a calibration ranking in the original order,
        blended into every request's scores with weight spec.prior_mix."""
        self.model = model
        self.adapter = adapter_for(model)
        self.layers = self.adapter.layers(model)
        self.L = len(self.layers)
        self.spec = spec.validate(self.L)
        self.ffns = [PrunableFFN(self.adapter.ffn(layer), self.adapter.weights(self.adapter.ffn(layer)), i, self)
                     for i, layer in enumerate(self.layers)]
        self.I = self.ffns[0].width
        if any(f.width != self.I for f in self.ffns):
            raise ConfigError("layers of different FFN widths are not supported")
        self.patch = Patch(model, self.adapter, self.layers, self.ffns, "controller", self)
        self.spans = Spans(layer_devices(self.ffns))
        self.devices = self.spans.devices
        self.device, self.dtype = self.spans.home, self.ffns[0].w.w_down_t.dtype
        self.stats = Statistics(self.spans, self.I, spec.statistic, alignment=spec.allocation == "auto")
        self.order = self.identity_order()  # physical -> original neuron index per layer
        self.moved: set[int] = set()  # layers whose neurons compaction reordered
        self.fixed, self.fixed_prefix = None, None
        if fixed_masks is not None:
            if tuple(fixed_masks.shape) != (self.L, self.I):
                raise ConfigError(f"fixed masks must be (layers, neurons) = {(self.L, self.I)}, not {tuple(fixed_masks.shape)}")
            self.fixed = Layered.split(self.spans, fixed_masks.to(torch.bool))
        self.global_scores = None
        if float(spec.prior_mix) > 0:
            if global_scores is None or tuple(global_scores.shape) != (self.L, self.I):
                raise ConfigError(f"strategy.prior_mix={spec.prior_mix} needs a calibration ranking of shape {(self.L, self.I)}")
            self.global_scores = Layered.split(self.spans, global_scores.to(torch.float32))
        if weight is None and spec.ranking != "magnitude":  # the static weight of the ranking, from cached priors
            weight = ranking_weight(model, self.adapter, self.ffns, spec)
        self.weight = Layered.split(self.spans, weight) if weight is not None else None
        self.fixed_keep = fixed_keep(spec, self.L, self.I)  # the keep counts known before any statistics
        self.detector, self.monitored = None, []
        if spec.drift.enabled and self.fixed is None and spec.retrace_at == "detector":  # (the timing controls: no detector)
            self.monitored = sorted({l % self.L for l in spec.drift.layers})
            width = sum(self.adapter.attention_width(model, self.layers[l]) for l in self.monitored)
            self.detector = DriftDetector(spec.drift, width, self.device)
        self.schedule = Schedule(spec, self.detector.W if self.detector else None, self.fixed is not None,
                                 split=self.monitored[-1] if self.monitored else self.L)
        w = self.ffns[0].w
        self.tally = Tally(self.spans, self.I, self.device, sum(t.shape[1] * t.element_size() for t in w.neuron_major
                                                                if t.dim() == 2), spec)
        self.union = Union(self)
        self.stepper = Stepper(self)
        self.book = Bookkeeping(self)  # what the rules do to rows, detector and counters, for every driver
        self.plan, self.forced_plan, self.steps = IDLE, None, 1
        self.attn: dict[int, torch.Tensor] = {}  # this forward's monitored attention outputs
        self.h: dict[int, torch.Tensor] = {}  # this forward's FFN inputs (depth-aware allocation's alignment)
        self.captured: torch.Tensor | None = None  # a forced forward's drift signal (plan.capture)
        self.alloc: torch.Tensor | None = None  # this forward's depth-aware allocation (in-layer builds)
        self.counts = Counters(self.device)  # run-level accounting: changed only through count()
        self.kept_sum = Layered.build(self.spans, lambda n, d: torch.zeros(n, dtype=torch.float64, device=d))
        self.rows: list = []
        self.reset_rows(1)
        if self.fixed is not None:  # the one mask build (the caller's) and the one compaction
            self.count(builds=1)
            self.kept_sum = self.fixed.map(lambda p: p.sum(dim=-1).to(torch.float64))
            self.maybe_compact()
            self.fixed_prefix = self.kept_prefix

    # ------------------------------------------------------------------ attach / detach
    def attach(self) -> "Controller":
        self.patch.apply(self._begin, self._end)  # controller_of(model) finds it from here on
        for l in self.monitored:
            self.patch.hook(self.adapter.attention(self.layers[l]).register_forward_hook(self._attn_hook(l)))
        if self.stats.alignment:
            for l, layer in enumerate(self.layers):
                self.patch.hook(self.adapter.residual_in(layer).register_forward_pre_hook(self._h_hook(l)))
                added = self.adapter.ffn_added(layer)
                if added is not None:
                    self.patch.hook(added.register_forward_hook(self._o_hook(l)))
        return self

    @torch.no_grad()
    def detach(self) -> None:
        """Take the engine off: the original FFN modules back, every neuron in its original place (bit for bit)."""
        for l in sorted(self.moved):  # neurons back in place before the original modules take their weights back
            permute_neurons(self.ffns[l].w, self.order[l].argsort().long())
        self.moved.clear()
        self.patch.undo()
        self.order = self.identity_order()

    # ------------------------------------------------------------------ neuron order (dart.engine.union decides)
    @torch.no_grad()
    def reorder(self, l: int, order: torch.Tensor) -> None:
        """Layer l's neurons into `order` (a permutation of the current physical positions), in place: its FFN
        weights, the neuron order, the prior weight, every row's mask and the statistics."""
        permute_neurons(self.ffns[l].w, order, [self.order[l]] + ([self.weight[l]] if self.weight is not None else []))
        self.moved.add(l)
        self.M[l] = self.M[l].index_select(-1, order)
        self.stats.reorder(l, order)

    @torch.no_grad()
    def swap(self, l: int, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Layer l's neurons at positions src copied to dst (a set of swaps: dart.engine.union.swaps), in place, in
        everything neuron-major reorder() moves."""
        for t in [*self.ffns[l].w.neuron_major, self.order[l]] + ([self.weight[l]] if self.weight is not None else []):
            move_neurons(t, dst, src)
        self.moved.add(l)
        self.M[l].index_copy_(-1, dst, self.M[l].index_select(-1, src))
        self.stats.move(l, dst, src)

    def paused(self):
        """Run the model dense (no tracing, masks or drift checks) inside the block: the dense reference."""
        return self.patch.paused()

    @property
    def is_paused(self) -> bool:
        return self.patch.is_paused

    @contextlib.contextmanager
    def decode_steps(self, k: int):
        """The model's forwards inside the block feed k tokens per row, run as k decode steps of the schedule (a
        driver asks Stepper.steady how many steps nothing changes in: chunked lockstep teacher forcing)."""
        self.steps = int(k)
        try:
            yield
        finally:
            self.steps = 1

    @contextlib.contextmanager
    def forced(self, plan: Plan):
        """The model's forwards inside the block run `plan` (a driver's), not the stepper's schedule."""
        before, self.forced_plan = self.forced_plan, plan
        try:
            yield
        finally:
            self.forced_plan = before

    # ------------------------------------------------------------------ accounting
    def count(self, **what) -> None:
        """Count what a driver did: seen/traced tokens, builds, checks, baseline/signal vectors, seconds,
        detector_bytes, requests, a trigger or a window entry (dart.engine.counters.Counters.add)."""
        self.counts.add(**what)

    def masks_built(self, seconds: float, alloc: torch.Tensor | None = None) -> None:
        """After a mask build (dart.engine.masks): a single sequence's compaction falls due; `alloc`, the depth-aware
        allocation of this forward's first in-layer build, is reused by its other layers."""
        if alloc is not None:
            self.alloc = alloc
        self.pending_compact = self.B == 1 and self.spec.execution != "masked"
        self.stepper.invalidate()
        self.count(seconds=seconds)

    def compaction_done(self) -> None:
        """No compaction is due any more (a driver that decided against one for now)."""
        self.pending_compact = False

    def compaction(self, kept_prefix: list[int] | None, seconds: float = 0.0) -> None:
        """After a compaction (dart.engine.union): every layer's kept prefix (None: not compacted); none is due."""
        self.pending_compact = False
        self.compacted, self.kept_prefix = kept_prefix is not None, kept_prefix
        self.stepper.invalidate()
        self.count(seconds=seconds)

    # ------------------------------------------------------------------ rows
    def new_request(self, batch: int, requests: int = 1) -> None:
        self.count(requests=requests)
        self.reset_rows(batch)

    def reset_rows(self, batch: int) -> None:
        """Fresh state for `batch` rows: no statistics, masks or baseline (fixed masks: the fixed ones)."""
        if self.rows:
            self.tally.fold(self.rows)
        self.rows = [self.schedule.new_row() for _ in range(batch)]
        self.B, self.step = batch, 0
        self.compacted, self.kept_prefix = False, None
        self.tally.reset(self.rows, self.fixed)
        if self.fixed is None:
            self.stats.reset(batch)
            self.M = Layered.build(self.spans, lambda n, d: torch.ones(n, batch, self.I, dtype=self.dtype, device=d))
            self.pending_compact = False
        else:  # every row holds the fixed mask (in the physical order) from its first token
            self.M = Layered(self.spans, [f.gather(1, o.long()).to(self.dtype)[:, None, :].repeat(1, batch, 1)
                                          for f, o in zip(self.fixed.parts, self.order.parts)])
            self.pending_compact = batch == 1 and self.spec.execution != "masked" and self.fixed_prefix is None
            self.compacted, self.kept_prefix = self.fixed_prefix is not None, self.fixed_prefix
        if self.detector is not None:
            self.detector.reset(batch)
        self.stepper.invalidate()

    def restore_rows(self, states: list) -> None:
        """The host state of the rows of a fresh batch (reset_rows) taken from saved rows (chunked teacher forcing)."""
        self.rows = [dataclasses.replace(s) for s in states]

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep (and repeat) the state of rows `index` (B',) long, host and device alike (chunked teacher forcing
        expands a traced context over its continuations with it)."""
        idx = index.to(self.device)
        host = index.tolist()
        self.tally.fold(self.rows)
        self.rows = [self.rows[i].copy() for i in host]
        self.B = len(host)
        if self.fixed is None:
            self.stats.select_rows(idx)
        self.M = self.M.map(lambda p: p.index_select(1, idx.to(p.device)))
        self.tally.select(idx)
        if self.detector is not None:
            self.detector.select_rows(idx)
        if self.B != 1:
            self.compacted, self.kept_prefix = (self.fixed_prefix is not None, self.fixed_prefix) if self.fixed is not None else (False, None)
        self.stepper.invalidate()

    @property
    def has_mask(self) -> list[bool]:
        return [r.has_mask for r in self.rows]

    def flags(self, values) -> torch.Tensor:
        """Host bools (B,) as a device tensor."""
        return torch.tensor(list(values), dtype=torch.bool, device=self.device)

    def drop_masks(self, b: int, layers: slice | None = None) -> None:
        """Row b runs every neuron of `layers` (None: all) from now on: its pruned tokens folded first."""
        self.tally.fold(self.rows, [b])
        self.tally.set_dense(b, layers)
        for sl, _ in self.spans.within(layers):
            self.M.view(sl)[:, b] = 1
        if self.B == 1 and layers is None:
            self.compacted = False
        self.stepper.invalidate()

    def restart_row(self, b: int) -> None:
        """Row b's statistics and detector state start over (a trigger: the new segment traces from zero)."""
        row = self.flags(i == b for i in range(self.B))
        self.stats.clear_rows(row)
        if self.detector is not None:
            self.detector.clear_rows(row)

    # ------------------------------------------------------------------ forwards
    def _begin(self, module, args, kwargs):
        x = forward_input(args, kwargs)
        cache = kwargs.get("past_key_values")
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        self.begin_forward(x.shape[0], x.shape[1], past, kwargs.get("attention_mask"))

    def begin_forward(self, B: int, T: int, past: int, attention_mask: torch.Tensor | None = None) -> None:
        """Start one forward of B rows and T new tokens after `past` cached ones (a decode loop that does not call
        the model's forward, such as dart.bench.lean, calls this, record_attention and end_forward)."""
        self.alloc = None
        if self.is_paused:
            self.plan = IDLE
            return
        if self.forced_plan is not None:
            self.plan = self.forced_plan
            return
        if past == 0:
            self.new_request(B)
        elif B != self.B:
            raise RuntimeError(f"batch size changed from {self.B} to {B} inside one request")
        mask = attention_mask
        valid = mask[:, -T:].to(torch.float32) if torch.is_tensor(mask) and mask.dim() == 2 else None
        self.plan = self.stepper.plan(T, valid)

    def _end(self, module, args, kwargs, output):
        self.end_forward()

    def end_forward(self) -> None:
        if self.is_paused:
            return
        if self.forced_plan is None:
            self.stepper.after()
            self.step += self.steps
        elif self.forced_plan.capture:
            self.captured = self.signal() if self.attn else None
        self.attn.clear()
        self.h.clear()
        self.plan = IDLE

    def signal(self) -> torch.Tensor:
        """This forward's drift signal: the monitored layers' attention outputs, on the detector's device."""
        return torch.cat([self.attn[l].to(self.device) for l in self.monitored], dim=-1)

    def record_attention(self, layer: int, output: torch.Tensor) -> None:
        """The self-attention output of a monitored layer for this forward (the drift detector's signal); the last
        one completes the signal, which the stepper takes right away (a check may reset a row mid-forward)."""
        p = self.plan
        if p.capture or p.drift_trace_w is not None or p.drift_decode_rows is not None:
            self.attn[layer] = output
            if layer == self.monitored[-1] and self.forced_plan is None and not self.is_paused:
                self.plan = self.stepper.on_signal(self.signal(), self.plan)

    def plan_at(self, l: int) -> Plan:
        """The running plan of layer l (the late part of a split plan from `split` on), on layer l's device."""
        p = self.plan
        if p.late is not None and l >= p.split:
            p = p.late
        return p.on(self.devices[l]) if self.spans.remote[l] else p

    def _attn_hook(self, layer: int):
        def hook(module, args, output):
            self.record_attention(layer, output[0] if isinstance(output, tuple) else output)
        return hook

    def _h_hook(self, layer: int):
        def hook(module, args):
            if self.plan_at(layer).align:
                self.h[layer] = args[0]
        return hook

    def _o_hook(self, layer: int):
        def hook(module, args, output):
            p = self.plan_at(layer)
            if p.align and layer in self.h:
                self.stats.update_alignment(layer, self.h.pop(layer), output, p.trace_w, self.spec.auto.reference)
        return hook

    # ------------------------------------------------------------------ the FFN hot path
    def run_ffn(self, ffn: PrunableFFN, x: torch.Tensor) -> torch.Tensor:
        l = ffn.index
        p = self.plan_at(l)
        if p.compact is not None:  # a kept prefix; a batch's union also masks each row inside it (dart.engine.union)
            return ffn.compacted(x, p.compact[l], self.M[l] if p.compact_rows else None)
        a = ffn.intermediate(x)
        if p.trace_w is not None:
            self.stats.update(l, a, p.trace_w, p.decay)
        if p.build_rows is not None:
            self.build(p.build_rows, layer=l)
        if p.prune is ROWS:
            a = a * self.M[l][:, None, :]
        elif p.prune is not None:
            a = torch.where(p.prune[..., None], a * self.M[l][:, None, :], a)
        out = ffn.down(a)
        if p.align and self.adapter.ffn_added(self.layers[l]) is None and l in self.h:
            self.stats.update_alignment(l, self.h.pop(l), out, p.trace_w, self.spec.auto.reference)
        return out

    # ------------------------------------------------------------------ masks
    def build(self, rows: torch.Tensor, layer: int | None = None) -> None:
        """Masks for rows (B,) bool: of every layer (layer None, between forwards) or of one layer (inside a forward,
        as it runs): dart.engine.masks.build."""
        build_masks(self, rows, layer)

    def maybe_compact(self) -> None:
        """A single sequence's kept neurons moved to a contiguous prefix of every layer (in place); a batch's: the
        union of its rows' kept sets (dart.engine.union)."""
        if self.B > 1:
            self.union.update()
        else:
            self.union.single()

    # ------------------------------------------------------------------ reporting
    def effective(self) -> dict:
        return self.tally.effective(self.rows)

    def masks(self) -> torch.Tensor:
        """Current masks in the ORIGINAL neuron order, (L, B, I) bool."""
        return original_masks(self)

    # ------------------------------------------------------------------ construction helpers
    def identity_order(self) -> Layered:
        return Layered.build(self.spans, lambda n, d: torch.arange(self.I, dtype=torch.int32, device=d).repeat(n, 1))

    def score(self, model, input_ids: torch.Tensor, prompt_len: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw):
        """Logits of one scoring forward over whole requests (lm-eval's loglikelihood protocol): dart.engine.onepass."""
        from dart.engine.onepass import score

        return score(self, model, input_ids, prompt_len, attention_mask, **kw)
