"""Where the engine's per-layer state lives: on the device of that layer's FFN.

A model spread over several GPUs (`model.device_map`, accelerate) puts consecutive layers on different devices.
The engine's per-layer state (statistics, masks, neuron order, priors, kept counts) is a stack over layers; here
that stack is a `Layered`: one tensor per group of consecutive layers that share a device, so that layer l's
slice always sits beside layer l's weights and no hot-path op mixes devices. With one device (the usual case)
there is one group and every whole-stack operation is the single tensor op it always was.

Whole-stack operations (mask builds, compaction, reports) run once per group (`Layered.groups()`); per-layer
access (`x[l]`, the FFN hot path) is a list look-up of a view. What every layer needs from a forward's plan
(trace weights, rows) is moved to each group's device once per forward (`dart.engine.plan.Plan.on`).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch


class Spans:
    """Consecutive layers grouped by device: [(start, stop, device), ...] in layer order."""

    def __init__(self, devices: list[torch.device], breaks: tuple[int, ...] = ()):
        """breaks: layers that start a new group even on the same device (tests: the multi-group code paths
        on one CPU, checked against one group)."""
        if not devices:
            raise ValueError("no layers")
        self.devices = [torch.device(d) for d in devices]
        groups: list[list] = []
        for l, d in enumerate(self.devices):
            if groups and groups[-1][2] == d and l not in breaks:
                groups[-1][1] = l + 1
            else:
                groups.append([l, l + 1, d])
        self.groups = [(a, b, d) for a, b, d in groups]
        self.L = len(self.devices)
        self.home = self.devices[0]  # host-side scalars and the detector live here
        self.remote = [d != self.home for d in self.devices]  # layers whose plan tensors must be moved
        self.single = len(self.groups) == 1
        # layer -> (its group, its index inside the group)
        self.where = [(g, l - a) for g, (a, b, _) in enumerate(self.groups) for l in range(a, b)]

    def within(self, sl: slice | int | None = None) -> Iterator[tuple[slice, torch.device]]:
        """The groups' parts of the layers `sl` (None: all; an int: one layer): (slice of layers, device)."""
        if isinstance(sl, int):
            yield slice(sl, sl + 1), self.devices[sl]
            return
        lo, hi = (0, self.L) if sl is None else (sl.start or 0, self.L if sl.stop is None else sl.stop)
        for a, b, d in self.groups:
            s, e = max(a, lo), min(b, hi)
            if s < e:
                yield slice(s, e), d

    def __repr__(self) -> str:
        return "Spans(" + ", ".join(f"{a}-{b - 1}: {d}" for a, b, d in self.groups) + ")"


class Layered:
    """A per-layer stack (L, ...) kept as one tensor per device group of `spans`."""

    __slots__ = ("spans", "parts", "layers")

    def __init__(self, spans: Spans, parts: list[torch.Tensor]):
        self.spans, self.parts = spans, parts
        self.layers = [p[i] for p in parts for i in range(p.shape[0])]  # views: x[l] is a list look-up

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, spans: Spans, make: Callable[[int, torch.device], torch.Tensor]) -> "Layered":
        """make(n_layers, device) -> (n_layers, ...) tensor, once per group."""
        return cls(spans, [make(b - a, d) for a, b, d in spans.groups])

    @classmethod
    def split(cls, spans: Spans, full: torch.Tensor) -> "Layered":
        """A (L, ...) tensor on any device, split onto the groups' devices."""
        return cls(spans, [full[a:b].to(d) for a, b, d in spans.groups])

    @classmethod
    def stack(cls, spans: Spans, per_layer: list[torch.Tensor]) -> "Layered":
        """One tensor per layer (each on its layer's device, or moved there) stacked per group."""
        return cls(spans, [torch.stack([per_layer[l].to(d) for l in range(a, b)]) for a, b, d in spans.groups])

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Layered":
        """A new stack: fn applied to every group's tensor (an op over the layer axis and beyond, per group)."""
        return Layered(self.spans, [fn(p) for p in self.parts])

    # ------------------------------------------------------------------ access
    def __getitem__(self, index):
        """x[l] / x[l, ...]: layer l's view (the hot path). Any other index reads the gathered stack."""
        if isinstance(index, int):
            return self.layers[index]
        if isinstance(index, tuple) and index and isinstance(index[0], int):
            return self.layers[index[0]][index[1:]]
        return self.gather()[index]

    def __setitem__(self, index, value) -> None:
        """x[l] = v, x[l, ...] = v: into layer l's view. x[:] = v, x[:, ...] = v: into every group (v either
        broadcasts or is a whole (L, ...) stack, split by group)."""
        if isinstance(index, int):
            self.layers[index].copy_(value)
            return
        if isinstance(index, tuple) and index and isinstance(index[0], int):
            self.layers[index[0]][index[1:]] = value
            return
        head, rest = (index[0], index[1:]) if isinstance(index, tuple) else (index, ())
        if head != slice(None):
            raise IndexError(f"Layered assignment takes x[l, ...] or x[:, ...], not {index!r}")
        whole = torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == self.spans.L
        for (a, b, d), p in zip(self.spans.groups, self.parts):
            v = value[a:b] if whole else value
            p[(slice(None), *rest)] = v.to(d) if torch.is_tensor(v) else v

    def view(self, sl: slice) -> torch.Tensor:
        """The (n, ...) view of layers `sl`, which must lie inside one group (as `Spans.within` yields them)."""
        g, i = self.spans.where[sl.start]
        a, b, _ = self.spans.groups[g]
        if sl.stop > b:
            raise ValueError(f"layers {sl.start}-{sl.stop - 1} span device groups: {self.spans}")
        return self.parts[g][i: i + sl.stop - sl.start]

    def groups(self) -> Iterator[tuple[slice, torch.device, torch.Tensor]]:
        for (a, b, d), p in zip(self.spans.groups, self.parts):
            yield slice(a, b), d, p

    def gather(self, device=None) -> torch.Tensor:
        """The whole (L, ...) stack as one tensor on `device` (default: the home device). For reports and
        host reads, never on the hot path."""
        device = self.spans.home if device is None else device
        if len(self.parts) == 1 and self.parts[0].device == torch.device(device):
            return self.parts[0]
        return torch.cat([p.to(device) for p in self.parts])

    def tolist(self) -> list:
        """Host values, one read per group."""
        out: list = []
        for p in self.parts:
            out += p.tolist()
        return out

    # ------------------------------------------------------------------ in place, every group
    def fill_(self, value) -> "Layered":
        for p in self.parts:
            p.fill_(value)
        return self

    def zero_(self) -> "Layered":
        for p in self.parts:
            p.zero_()
        return self

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.spans.L, *self.parts[0].shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        return self.parts[0].dtype

    def numel(self) -> int:
        return sum(p.numel() for p in self.parts)

    def element_size(self) -> int:
        return self.parts[0].element_size()

    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parts)

    def __repr__(self) -> str:
        return f"Layered({self.shape}, {self.dtype}, {self.spans})"

    # ------------------------------------------------------------------ reads of the whole stack (reports, tests)
    def __getattr__(self, name):
        """Tensor methods that READ (x.clone(), x.eq(1), x.abs(), ...) act on the gathered stack; in-place ones
        would act on a copy across devices, so they are refused (use `groups()` or the per-layer views)."""
        if name.startswith("__") or name in Layered.__slots__:
            raise AttributeError(name)
        if name.endswith("_"):
            raise AttributeError(f"Layered.{name}: in-place tensor ops run per group (groups(), x[l]), not on the stack")
        return getattr(self.gather(), name)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        unwrap = lambda v: v.gather() if isinstance(v, Layered) else v  # noqa: E731
        args = tuple(unwrap(a) if not isinstance(a, (list, tuple)) else type(a)(unwrap(x) for x in a) for a in args)
        return func(*args, **{k: unwrap(v) for k, v in (kwargs or {}).items()})


def layer_devices(ffns) -> list[torch.device]:
    """The device of each layer's FFN weights."""
    return [f.w.w_down_t.device for f in ffns]
