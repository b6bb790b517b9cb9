"""EngineSpec: every knob of the engine, validated once, before any model loads (docs/method.md).

The dataclasses carry no defaults: the only defaults are the YAML of `conf/strategy/` (the shared engine base
`_engine.yaml` and each strategy's file), composed by `dart.compose` (`engine_spec(**overrides)` for code and
tests, `build_strategy(name, ...)` for strategies). `from_dict` builds a spec from a composed config node."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from dart.errors import ConfigError, check_integer, choice_error

STATISTICS = ("l2", "ema", "griffin")
RANKINGS = ("magnitude", "max", "mean", "combined", "product")
MASK_RULES = ("topk", "mean")
ALLOCATIONS = ("uniform", "list", "auto")
PROTOCOLS = ("causal", "compat")
EXECUTIONS = ("auto", "masked", "compact")
ALIGN_REFERENCES = ("online", "residual")
DRIFT_PHASES = ("published", "before_mask")
BUDGETS = ("mask", "effective")
RETRACE_AT = ("detector", "periodic", "random")
ON_RETRACE = ("remask", "dense")
BATCH_MASKS = ("per_row", "shared")


@dataclasses.dataclass
class DriftSpec:
    """The topic-drift detector (docs/method.md section 5). Default: the published last-layer attention-output cosine,
    windows of 5, threshold mu - max(0.1 sigma, 0.1), trigger on the first window below it."""

    enabled: bool
    window: int  # W: tokens per window
    sigma_scale: float  # tau = mu - max(sigma_scale * sigma, min_margin)
    min_margin: float
    triggers: int  # pressure needed to trigger
    layers: Sequence[int]  # monitored decoder layers (their attention outputs are concatenated)
    nan_tau_compat: bool  # the published quirk: < 2 windows -> sigma NaN -> detector silently off
    # the baseline's last forward: `published` includes the forward that builds the masks (forward m), as the
    # published code does (windows close at m+W, m+2W, ...); `before_mask` stops at forward m-1
    phase: str
    min_windows: int  # a baseline needs this many windows of traced vectors (it keeps collecting until then;
    # 1: whatever was traced, one window of everything if fewer than W, as published)
    cooldown: int  # forwards after a trigger before a window may be checked again

    def validate(self) -> None:
        if int(self.window) < 1:
            raise ConfigError(f"strategy.drift.window={self.window!r} must be >= 1")
        if int(self.triggers) < 1:
            raise ConfigError(f"strategy.drift.triggers={self.triggers!r} must be >= 1")
        if self.sigma_scale < 0 or self.min_margin < 0:
            raise ConfigError("strategy.drift.sigma_scale and min_margin must be >= 0")
        if not list(self.layers):
            raise ConfigError("strategy.drift.layers must name at least one layer (e.g. [-1])")
        if self.phase not in DRIFT_PHASES:
            raise choice_error("strategy.drift.phase", self.phase, DRIFT_PHASES)
        if int(self.min_windows) < 1:
            raise ConfigError(f"strategy.drift.min_windows={self.min_windows!r} must be >= 1")
        if int(self.cooldown) < 0:
            raise ConfigError(f"strategy.drift.cooldown={self.cooldown!r} must be >= 0")


@dataclasses.dataclass
class AutoAllocSpec:
    """Depth-aware layer allocation constants (the published `all:auto`)."""

    reference: str  # online: cos(h, o), ||o - h|| / ||h||;  residual: h vs h + o (offline analysis)
    early_width: float  # we
    late_width: float  # wl
    early_floor: float  # a
    late_floor: float  # b
    min_prune: float
    max_prune: float
    iterations: int

    def validate(self) -> None:
        if self.reference not in ALIGN_REFERENCES:
            raise choice_error("strategy.auto.reference", self.reference, ALIGN_REFERENCES)
        if not 0 <= self.min_prune < self.max_prune <= 1:
            raise ConfigError(f"strategy.auto needs 0 <= min_prune < max_prune <= 1, got {self.min_prune}, {self.max_prune}")


@dataclasses.dataclass
class EngineSpec:
    sparsity: float
    statistic: str  # l2: sum a^2 (score ||a||);  ema: decayed |a|;  griffin: per-token-normalised a^2
    ema_decay: float | None  # set -> statistic ema
    ranking: str
    mask_rule: str
    allocation: str
    layer_keep: Sequence[float] | None  # allocation=list: keep fraction per layer
    auto: AutoAllocSpec
    masking_step: int  # m
    release_step: int | None  # r
    protocol: str
    drift: DriftSpec
    retrace_tokens: int | None  # forwards a re-trace traces before its new masks (None: masking_step)
    budget: str  # mask: every mask prunes `sparsity`; effective: masks prune harder to pay for dense tokens
    budget_horizon: int  # effective budget: tokens over which a mask repays the dense tokens before it
    budget_max: float  # effective budget: the most a mask may prune
    prior_mix: float  # weight of a calibration-corpus ranking blended into each request's scores (GLASS)
    execution: str  # auto: compact a single sequence, a batch on its rows' union if small enough
    union_max_keep: float  # execution=auto: a batch runs masked when its union keeps more (mean over layers)
    prior_chunk: int  # vocabulary rows per chunk when computing the projection priors
    # the published code's schedule quirks (dart_published): a trigger resets the row mid-forward (the layers from
    # the monitored one on re-trace from the trigger forward itself), and every depth-aware allocation builds the
    # first layer it builds with the LAST layer's keep count (dart.engine.schedule)
    published_quirks: bool
    # when a row re-traces: the drift detector's trigger (detector), every retrace_every pruned forwards (periodic),
    # or at each pruned forward with probability retrace_rate (random, a coin per row and forward seeded by
    # retrace_seed); and what it does then: drop the masks and re-trace them (remask), or run the next
    # retrace_tokens forwards dense and then the same masks again (dense: the dense-fallback control)
    retrace_at: str
    retrace_every: int
    retrace_rate: float
    retrace_seed: int
    on_retrace: str
    # per_row: every row of a batch its own masks (exact at any batch size); shared: one kept set per layer for the
    # whole batch, the top-k of the rows' normalised scores summed (k: the per-row count, or shared_keep * I), so a
    # batch runs one compacted prefix (dart.engine.masks)
    batch_mask: str
    shared_keep: float | None

    def __post_init__(self):
        if isinstance(self.auto, dict):
            self.auto = AutoAllocSpec(**self.auto)
        if isinstance(self.drift, dict):
            self.drift = DriftSpec(**self.drift)
        if self.ema_decay is not None and self.statistic == "l2":
            self.statistic = "ema"

    def validate(self, num_layers: int | None = None) -> "EngineSpec":
        if not 0.0 <= float(self.sparsity) < 1.0:
            raise ConfigError(f"sparsity={self.sparsity!r} is outside [0, 1)")
        for what, value, allowed in (
            ("strategy.statistic", self.statistic, STATISTICS), ("ranking", self.ranking, RANKINGS),
            ("strategy.mask_rule", self.mask_rule, MASK_RULES), ("strategy.allocation", self.allocation, ALLOCATIONS),
            ("strategy.protocol", self.protocol, PROTOCOLS), ("strategy.execution", self.execution, EXECUTIONS),
        ):
            if value not in allowed:
                raise choice_error(what, value, allowed)
        if self.statistic == "ema":
            if self.ema_decay is None or not 0.0 < float(self.ema_decay) < 1.0:
                raise ConfigError(f"strategy.ema_decay={self.ema_decay!r}: the EMA statistic needs a decay in (0, 1)")
        try:
            union_max = float(self.union_max_keep)
        except (TypeError, ValueError):
            union_max = -1.0
        if not 0.0 < union_max <= 1.0:
            raise ConfigError(f"strategy.union_max_keep={self.union_max_keep!r} must be in (0, 1]: the largest mean "
                              "keep fraction of a batch's union of masks that still runs compacted")
        if int(self.masking_step) < 0:
            raise ConfigError(f"strategy.masking_step={self.masking_step!r} must be >= 0")
        if self.protocol == "causal" and self.masking_step == 0:
            raise ConfigError(
                "strategy.masking_step=0 builds the mask from the same tokens it then prunes (the published "
                "same-pass behaviour): that is strategy.protocol=compat; with protocol=causal use masking_step >= 1"
            )
        if self.protocol == "compat" and self.masking_step != 0:
            raise ConfigError("strategy.protocol=compat is the published same-pass masking: it needs masking_step=0")
        if self.retrace_tokens is not None:
            if int(self.retrace_tokens) < 1 and self.protocol != "compat":
                raise ConfigError(f"strategy.retrace_tokens={self.retrace_tokens!r} must be >= 1 (0, the same-pass "
                                  "re-trace, only with protocol=compat)")
            if int(self.retrace_tokens) < 0:
                raise ConfigError(f"strategy.retrace_tokens={self.retrace_tokens!r} must be >= 0")
        if not isinstance(self.published_quirks, bool):
            raise ConfigError(f"strategy.published_quirks={self.published_quirks!r} must be true or false")
        if self.retrace_at not in RETRACE_AT:
            raise choice_error("strategy.retrace_at", self.retrace_at, RETRACE_AT)
        if self.on_retrace not in ON_RETRACE:
            raise choice_error("strategy.on_retrace", self.on_retrace, ON_RETRACE)
        check_integer("strategy.retrace_every", self.retrace_every, 1)
        try:
            rate = float(self.retrace_rate)
        except (TypeError, ValueError):
            rate = -1.0
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"strategy.retrace_rate={self.retrace_rate!r} must be a probability in [0, 1]")
        if isinstance(self.retrace_seed, bool) or not isinstance(self.retrace_seed, int):
            raise ConfigError(f"strategy.retrace_seed={self.retrace_seed!r} must be an integer")
        if self.on_retrace == "dense" and self.retrace_len < 1:
            raise ConfigError("strategy.on_retrace=dense runs retrace_tokens forwards dense: it needs retrace_tokens >= 1")
        if self.batch_mask not in BATCH_MASKS:
            raise choice_error("strategy.batch_mask", self.batch_mask, BATCH_MASKS)
        if self.shared_keep is not None:
            try:
                keep = float(self.shared_keep)
            except (TypeError, ValueError):
                keep = -1.0
            if not 0.0 < keep <= 1.0:
                raise ConfigError(f"strategy.shared_keep={self.shared_keep!r} must be a keep fraction in (0, 1] or null")
        if self.batch_mask == "shared" and (self.mask_rule != "topk" or self.budget != "mask"):
            raise ConfigError("strategy.batch_mask=shared keeps a count of neurons for the batch: it needs "
                              "strategy.mask_rule=topk and strategy.budget=mask")
        if self.budget not in BUDGETS:
            raise choice_error("strategy.budget", self.budget, BUDGETS)
        if self.budget == "effective" and (self.mask_rule != "topk" or self.allocation != "uniform"):
            raise ConfigError("strategy.budget=effective sets each mask's count from the run's dense tokens: it needs "
                              "strategy.mask_rule=topk and strategy.allocation=uniform")
        if int(self.budget_horizon) < 1:
            raise ConfigError(f"strategy.budget_horizon={self.budget_horizon!r} must be >= 1")
        if self.budget == "effective" and not float(self.sparsity) <= float(self.budget_max) < 1.0:
            raise ConfigError(f"strategy.budget_max={self.budget_max!r} must be in [sparsity, 1)")
        if not 0.0 <= float(self.prior_mix) <= 1.0:
            raise ConfigError(f"strategy.prior_mix={self.prior_mix!r} must be in [0, 1]")
        if self.release_step is not None and int(self.release_step) <= int(self.masking_step):
            raise ConfigError(f"strategy.release_step={self.release_step} must be after masking_step={self.masking_step}")
        if self.allocation == "list":
            if not self.layer_keep:
                raise ConfigError("strategy.allocation=list needs strategy.layer_keep=[keep fraction per layer]")
            if any(not 0.0 < float(v) <= 1.0 for v in self.layer_keep):
                raise ConfigError(f"strategy.layer_keep={list(self.layer_keep)} entries must be in (0, 1]")
            if num_layers is not None and len(self.layer_keep) != num_layers:
                raise ConfigError(f"strategy.layer_keep has {len(self.layer_keep)} entries; the model has {num_layers} layers")
        if self.allocation == "auto" and self.mask_rule != "topk":
            raise ConfigError("strategy.allocation=auto sets a count per layer: it needs strategy.mask_rule=topk")
        self.auto.validate()
        self.drift.validate()
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "EngineSpec":
        """A spec from a composed strategy node (extra keys, such as _target_ or name, are not knobs)."""
        return spec_from_dict(cls, d)

    @property
    def retrace_len(self) -> int:
        """Forwards a re-trace traces (0: the same-pass build of one token, as m = 0)."""
        return int(self.masking_step if self.retrace_tokens is None else self.retrace_tokens)

    @property
    def needs_priors(self) -> bool:
        return self.ranking != "magnitude"

    @property
    def global_build(self) -> bool:
        """Masks need every layer's statistics (depth-aware allocation), so a one-pass build is impossible."""
        return self.allocation == "auto"


def spec_from_dict(cls, d: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        where = {EngineSpec: "strategy", DriftSpec: "strategy.drift", AutoAllocSpec: "strategy.auto"}[cls]
        raise ConfigError(f"{where}.{unknown[0]} is not a knob; knobs: {', '.join(sorted(names))}")
    missing = sorted(names - set(d))
    if missing:
        raise ConfigError(f"the strategy config lacks {', '.join(missing)}: build strategies through "
                          "dart.compose.build_strategy (or conf/strategy/*.yaml), which supplies every default")
    kw = {k: d[k] for k in names}
    if cls is EngineSpec:
        kw["auto"] = kw["auto"] if isinstance(kw["auto"], AutoAllocSpec) else spec_from_dict(AutoAllocSpec, dict(kw["auto"]))
        kw["drift"] = kw["drift"] if isinstance(kw["drift"], DriftSpec) else spec_from_dict(DriftSpec, dict(kw["drift"]))
    return cls(**kw)
