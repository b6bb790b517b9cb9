"""The decode kernels (dart/kernels) against their plain-torch references (dart/kernels/reference.py): every ISA path
this CPU runs (AVX512-BF16, AVX2, plain C++), bf16 and fp32, batch 1 to 8, ragged sizes, sparsity 0 to 95%.

Tolerances: the kernels round every intermediate where torch does, so they differ from torch only in the order of fp32
additions. fp32: within 1e-5 of the output's scale. bf16: within 2 bf16 steps (2^-7 relative) of the output's scale
for a product, 4 for the gated FFN's input (three roundings), and at least 90% of the outputs bit-identical to torch's.
The sparse kernels' counts of active inputs are exact."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dart import kernels
from dart.kernels import build, reference

pytestmark = pytest.mark.skipif(build.compiler() is None, reason="no C++ compiler on this machine: kernels off")

DTYPES = [torch.bfloat16, torch.float32]
SHAPES = [(1, 7), (33, 100), (257, 96), (96, 1536 + 17)]  # (N, K): ragged, under and over a vector's width


@pytest.fixture(scope="module")
def ext():
    e = kernels.ext()
    assert e is not None, f"the kernels did not build here: {kernels.info()['reason']}"
    return e


def isas(ext):
    return list(range(ext.isa() + 1))


def close(got, ref, dtype, steps=2):
    got, ref = got.double(), ref.double()
    scale = ref.abs().max().clamp_min(1e-30)
    tol = 1e-5 if dtype == torch.float32 else steps * 2.0 ** -7
    err = ((got - ref).abs() / scale).max().item()
    assert err <= tol, f"max error {err:.3g} of the output's scale > {tol:.3g}"
    if dtype == torch.bfloat16:
        same = (got == ref).double().mean().item()
        assert same >= 0.9, f"only {same:.1%} of bf16 outputs equal torch's"


def data(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def sparsify(x, s):
    """x with its smallest fraction s (by |x|) zeroed, and the threshold that keeps the rest."""
    if s == 0:
        return x, 0.0
    t = x.abs().float().flatten().kthvalue(max(1, int(s * x.numel()))).values.item()
    return x, t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", [1, 2, 3, 5, 8])
def test_gemv_equals_linear(ext, dtype, B):
    for i, (N, K) in enumerate(SHAPES):
        x, w, b = data((B, K), dtype, i), data((N, K), dtype, 10 + i), data((N,), dtype, 20 + i)
        ref = reference.linear(x, w, b)
        for isa in isas(ext):
            close(ext.gemv(x, w, b, isa), ref, dtype)
            close(ext.gemv(x, w, None, isa), reference.linear(x, w), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv_on_a_kept_prefix_of_columns(ext, dtype):
    """The engine's compacted down projection: the first k columns of a (D, I) weight, row stride I."""
    D, I, k = 64, 300, 123
    w, x = data((D, I), dtype, 1), data((2, k), dtype, 2)
    prefix = w[:, :k]
    assert prefix.stride() == (I, 1)
    for isa in isas(ext):
        close(ext.gemv(x, prefix, None, isa), reference.linear(x, prefix.contiguous()), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [nn.SiLU(), nn.GELU(approximate="tanh"), nn.ReLU()])
def test_gated_equals_torch(ext, dtype, act):
    for B in (1, 4, 8):
        N, K = 301, 130
        x, wg, wu = data((B, K), dtype, 3), data((N, K), dtype, 4) / 8, data((N, K), dtype, 5) / 8
        for isa in isas(ext):
            close(ext.gated(x, wg, wu, kernels.act_code(act), isa), reference.gated(x, wg, wu, act), dtype, steps=4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.7, 0.95])
def test_sparse_equals_masked_linear(ext, dtype, s):
    for B in (1, 3, 8):
        for i, (N, K) in enumerate([(100, 64), (1536, 333), (4200, 96)]):  # narrow (split rows) and wide (split columns)
            x, t = sparsify(data((B, K), dtype, 30 + i), s)
            x[0, :5] = 0  # zeros are never read, whatever the threshold
            wt = data((K, N), dtype, 40 + i)
            ref, n_ref = reference.sparse_linear(x, wt, t)
            for isa in isas(ext):
                out, n = ext.sparse(x, wt, t, None, isa)
                close(out, ref, dtype)
                assert torch.equal(n, n_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s", [0.0, 0.5, 0.9])
def test_sparse_gated_equals_masked(ext, dtype, s):
    act = nn.SiLU()
    K, N = 160, 520
    wgt, wut = data((K, N), dtype, 6) / 8, data((K, N), dtype, 7) / 8
    for B in (1, 2, 8):
        x, t = sparsify(data((B, K), dtype, 8), s)
        xu = torch.where(torch.rand(B, K, generator=torch.Generator().manual_seed(9)) < 0.5, x, 0.0).to(dtype)
        for isa in isas(ext):
            for a, b in ((x, x), (x, xu)):  # TEAL: one input; WINA: two differently masked ones
                out, n = ext.sparse_gated(a, b, t, wgt, wut, kernels.act_code(act), isa)
                ref, n_ref = reference.sparse_gated(a, b, t, wgt, wut, act)
                close(out, ref, dtype, steps=4)
                assert torch.equal(n, n_ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cats_reads_up_only_where_the_gate_is_kept(ext, dtype):
    act = nn.SiLU()
    N, K = 403, 96
    wg, wu = data((N, K), dtype, 10) / 4, data((N, K), dtype, 11) / 4
    for B in (1, 3, 8):
        x = data((B, K), dtype, 12)
        g = act(reference.linear(x, wg)).abs().float()
        for s in (0.0, 0.5, 0.9):  # the threshold halfway between two |g| (no neuron on the edge of fp32 rounding)
            v = g.flatten().sort().values
            k = max(1, int(s * g.numel()))
            t = float((v[k - 1] + v[k]) / 2) if s else 0.0
            ref, n_ref = reference.cats(x, wg, wu, t, act)
            for isa in isas(ext):
                out, n = ext.cats(x, wg, wu, t, kernels.act_code(act), isa)
                close(out, ref, dtype, steps=4)
                assert torch.equal(n, n_ref)


def test_dispatch_only_inside_enabled_and_only_where_it_fits(ext):
    x, w = data((1, 64), torch.bfloat16, 13), data((32, 64), torch.bfloat16, 14)
    assert not kernels.active()
    assert torch.equal(kernels.linear(x, w), reference.linear(x, w))  # outside: torch itself
    with kernels.enabled():
        assert kernels.fits(x, w)
        assert not kernels.fits(data((9, 64), torch.bfloat16, 15), w)  # prefill-sized: torch
        assert not kernels.fits(x.float(), w)  # mixed dtypes: torch
        assert not kernels.fits(x, w.t().contiguous().t())  # no unit column stride: torch
        close(kernels.linear(x[None], w), reference.linear(x[None], w), torch.bfloat16)
    assert not kernels.active()


def test_read_pass_reads(ext):
    buf = torch.ones(1 << 20, dtype=torch.uint8)
    assert ext.read_pass(buf) >= 0


def test_no_compiler_means_torch_everywhere(monkeypatch, capsys):
    """Without a compiler one line says so, nothing is active inside enabled(), and every product is torch's own."""
    monkeypatch.setattr(build, "compiler", lambda: None)
    saved = dict(kernels._state)
    kernels._state.update(loaded=False, ext=None, reason=None, said=False)
    try:
        x, w = data((1, 64), torch.float32, 16), data((32, 64), torch.float32, 17)
        with kernels.enabled():
            assert not kernels.active()
            assert torch.equal(kernels.linear(x, w), reference.linear(x, w))
            act = nn.SiLU()
            assert torch.equal(kernels.gated(x, w, w, act), reference.gated(x, w, w, act))
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "decode kernels off: no C++ compiler" in err[0]
        assert kernels.info() == {"available": False, "isa": None, "reason": "no C++ compiler found (c++, g++ or clang++; $CXX)"}
    finally:
        kernels._state.update(saved)


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("DART_KERNELS", "off")
    mod, reason = build.load()
    assert mod is None and "DART_KERNELS=off" in reason


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.int32])
def test_move_equals_indexing(ext, dtype):
    """Neurons moved in place (compaction) along rows and columns: exactly torch's indexing."""
    g = torch.Generator().manual_seed(18)
    t = (torch.randn(37, 301, generator=g) * 100).to(dtype)
    perm = torch.randperm(301, generator=g)
    src, dst = torch.randperm(301, generator=g)[:50], torch.randperm(301, generator=g)[:50]
    for dim in (0, 1):
        base = t if dim == 1 else t[:, :37].t().contiguous()  # rows: 37 x 301 -> move rows of a (301, 37) tensor
        a = base.clone()
        ext.move_(a, dim, None, perm[:base.shape[dim]] if dim == 1 else torch.randperm(base.shape[0], generator=g))
        b = base.clone()
        want = base.clone()
        want_idx = torch.arange(base.shape[dim])
        ext.move_(b, dim, dst[dst < base.shape[dim]][:5].contiguous(), src[src < base.shape[dim]][:5].contiguous())
        d5, s5 = dst[dst < base.shape[dim]][:5], src[src < base.shape[dim]][:5]
        if dim == 0:
            want[d5] = base[s5]
        else:
            want[:, d5] = base[:, s5]
        assert torch.equal(b, want)
        del want_idx
    a = t.clone()
    ext.move_(a, 1, None, perm)
    assert torch.equal(a, t[:, perm])
