"""Decode kernels for CPUs: the products of a decode step at the machine's memory bandwidth.

At batch 1 to 8 a decode step is a sequence of matrix-vector products that read every weight once; torch's bf16 GEMV
streams well below what the memory can deliver on many CPUs. These kernels (dart/kernels/csrc, a torch C++ extension
built once per machine: dart.kernels.build) compute, with fp32 accumulation, on bfloat16 or float32 weights:

- `linear(x, w, b)`: x @ w.T (+ b), w row-major (N, K) with any row stride: a whole weight, or the engine's kept
  prefix of rows (gate/up) or columns (down);
- `gated(x, wg, wu, act)`: act(x wg^T) * (x wu^T) in one pass over both weights (the gated FFN's input side);
- `sparse_linear(x, wt, t)`: x' @ wt with x' = x where x != 0 and |x| >= t, wt K-major (K, N): only the rows of active
  inputs are read (TEAL's and WINA's FFN products, CATS's down projection);
- `sparse_gated(xg, xu, t, wgt, wut, act)`: act(xg' wgt) * (xu' wut), K-major (TEAL, WINA);
- `cats(x, wg, wu, t, act)`: CATS's input side: the gate dense, up read only for the neurons whose |act(gate)| >= t;
- `move(t, dim, dst, src)`: neurons moved in place along rows or columns (the engine's compaction; exact).

Each has a plain-torch reference in `dart.kernels.reference` (the exact path, tested against the kernels); every
intermediate is rounded where torch rounds it (a bf16 linear's output, the activation's, the product's), so the two
differ only in the order of fp32 additions.

When they run: inside `enabled()` (the decode loops, generation at batch <= 8 and `dart.prune` turn it on), on CPU
tensors of one dtype (bf16 or fp32), with at most `MAX_ROWS` rows. Everything else (prefill, teacher forcing, GPUs,
other dtypes) runs through torch as before, and with no compiler the kernels are off with one line saying why.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

MAX_ROWS = 8
ACTS = {"silu": 0, "gelu_tanh": 1, "relu": 2}

_state = {"loaded": False, "ext": None, "reason": None, "depth": 0, "said": False}


def ext():
    """The compiled extension, built or loaded on first use; None where the kernels cannot be had (said once)."""
    if not _state["loaded"]:
        from dart.kernels.build import load, log

        _state["ext"], _state["reason"] = load()
        _state["loaded"] = True
        if _state["reason"] and not _state["said"]:
            log(f"decode kernels off: {_state['reason']}; torch runs every product (the results of a run without them)")
            _state["said"] = True
    return _state["ext"]


def available() -> bool:
    return ext() is not None


def info() -> dict:
    """What a run records: whether the kernels are there, which instruction set they use, why not."""
    from dart.kernels.build import ISA_NAMES

    e = ext()
    return {"available": e is not None, "isa": ISA_NAMES.get(e.isa()) if e is not None else None,
            "reason": _state["reason"]}


def used() -> dict | None:
    """`info()` once something asked for the kernels in this process (a decode loop, generation), else None."""
    return info() if _state["loaded"] else None


@contextlib.contextmanager
def enabled(on: bool = True):
    """Decode products go through the kernels inside the block (where they fit; nested blocks count)."""
    if not on:
        yield
        return
    ext()
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1


def active() -> bool:
    return _state["depth"] > 0 and _state["ext"] is not None


def fits(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """The kernels can run this product: a CPU tensor of bf16 or fp32, weights of its dtype with unit column stride,
    at most MAX_ROWS rows."""
    if not active() or x.device.type != "cpu" or x.dtype not in (torch.bfloat16, torch.float32):
        return False
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return 1 <= rows <= MAX_ROWS and all(w.dtype == x.dtype and w.dim() == 2 and w.stride(-1) == 1 for w in weights)


def act_code(act) -> int | None:
    """The kernels' code of an activation module (SiLU, tanh-GELU, ReLU), None for any other (torch runs it)."""
    name = type(act).__name__
    if isinstance(act, nn.SiLU) or name == "SiLUActivation":
        return ACTS["silu"]
    if (isinstance(act, nn.GELU) and act.approximate == "tanh") or name in ("GELUTanh", "PytorchGELUTanh"):
        return ACTS["gelu_tanh"]
    if isinstance(act, nn.ReLU):
        return ACTS["relu"]
    return None


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, w, b), through the GEMV kernel where it fits."""
    if not fits(x, w) or (b is not None and (b.dtype != x.dtype or not b.is_contiguous())):
        return F.linear(x, w, b)
    return _state["ext"].gemv(_rows(x), w, b).view(*x.shape[:-1], w.shape[0])


def gated(x: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, act) -> torch.Tensor:
    """act(F.linear(x, wg)) * F.linear(x, wu), in one kernel call where it fits (no biases)."""
    code = act_code(act)
    if code is None or not fits(x, wg, wu):
        return act(F.linear(x, wg)) * F.linear(x, wu)
    return _state["ext"].gated(_rows(x), wg, wu, code).view(*x.shape[:-1], wg.shape[0])


def sparse_linear(x: torch.Tensor, wt: torch.Tensor, t: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x' @ wt, active inputs per row) with x' = x where x != 0 and |x| >= t; wt K-major (K, N). The caller checks
    `fits` first (dart.kernels.reference.sparse_linear is the torch path)."""
    out, n = _state["ext"].sparse(_rows(x), wt, float(t))
    return out.view(*x.shape[:-1], wt.shape[1]), n.view(x.shape[:-1])


def sparse_gated(xg: torch.Tensor, xu: torch.Tensor, t: float, wgt: torch.Tensor, wut: torch.Tensor, act
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(act(xg' wgt) * (xu' wut), active inputs (2, ...) of gate and up); K-major weights; the caller checks `fits`
    and `act_code`."""
    out, n = _state["ext"].sparse_gated(_rows(xg), _rows(xu), float(t), wgt, wut, act_code(act))
    return out.view(*xg.shape[:-1], wgt.shape[1]), n.view(2, *xg.shape[:-1])


def cats(x: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, t: float, act) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, kept neurons per row): g = act(x wg^T), a = g * (x wu^T) where |g| >= t (up read only there), else 0."""
    out, n = _state["ext"].cats(_rows(x), wg, wu, float(t), act_code(act))
    return out.view(*x.shape[:-1], wg.shape[0]), n.view(x.shape[:-1])


def move(t: torch.Tensor, dim: int, dst: torch.Tensor | None, src: torch.Tensor) -> bool:
    """In place, t[dst] = t[src] along `dim` (dst None: t = t[src], src a permutation) through the kernel, for a 2-d CPU
    tensor with unit column stride (exact: bytes moved); False where it does not apply (the caller moves them)."""
    if t.device.type != "cpu" or t.dim() != 2 or t.stride(1) != 1 or not available():
        return False
    _state["ext"].move_(t, dim, None if dst is None else dst.long().contiguous(), src.long().contiguous())
    return True


@contextlib.contextmanager
def decoding(model):
    """Generation through the kernels: inside the block every nn.Linear of `model` computes through `linear` (the
    attention projections, the LM head, a dense FFN's projections) and the engine's FFNs through theirs, wherever a
    forward has at most MAX_ROWS rows (decode steps at batch <= 8); prefill and everything else run as before."""
    patched = []
    if available():
        for mod in model.modules():
            if isinstance(mod, nn.Linear) and "forward" not in mod.__dict__:
                mod.forward = _kernel_forward(mod)
                patched.append(mod)
    try:
        with enabled():
            yield
    finally:
        for mod in patched:
            del mod.forward


def _kernel_forward(mod: nn.Linear):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return linear(x, mod.weight, mod.bias)

    return forward
