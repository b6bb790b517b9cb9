// The Python module: the kernels, the ISA probe and a read-only streaming pass (the machine's read bandwidth).
#include "common.h"

namespace dk {
namespace {

#if DART_X86
__attribute__((target("avx512f"))) double read_512(const char* p, int64_t i0, int64_t i1) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = i0;
  for (; i + 4 <= i1; i += 4) {
    a0 = _mm512_xor_si512(a0, _mm512_loadu_si512(p + 64 * i));
    a1 = _mm512_xor_si512(a1, _mm512_loadu_si512(p + 64 * (i + 1)));
    a2 = _mm512_xor_si512(a2, _mm512_loadu_si512(p + 64 * (i + 2)));
    a3 = _mm512_xor_si512(a3, _mm512_loadu_si512(p + 64 * (i + 3)));
  }
  for (; i < i1; ++i) a0 = _mm512_xor_si512(a0, _mm512_loadu_si512(p + 64 * i));
  a0 = _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3));
  return static_cast<double>(_mm512_reduce_add_epi64(a0) & 0xffff);
}
#endif

// A read-only pass over buf (every thread a contiguous share): what the machine can stream. Returns a sum of
// its words so that nothing is optimised away.
double read_pass(const torch::Tensor& buf) {
  TORCH_CHECK(buf.is_contiguous() && !buf.is_cuda(), "dart kernels: read_pass needs a contiguous CPU buffer");
  const int64_t n = buf.nbytes() / 64;
  const char* p = static_cast<const char*>(buf.data_ptr());
  const int isa = detect_isa();
  std::vector<double> part(std::max<int64_t>(1, at::get_num_threads()) * 8, 0.0);
  at::parallel_for(0, n, std::max<int64_t>(1, n / std::max<int64_t>(1, at::get_num_threads())), [&](int64_t i0, int64_t i1) {
    double s = 0.0;
#if DART_X86
    if (isa == AVX512)
      s = read_512(p, i0, i1);
    else
#endif
    {
      uint64_t a = 0;
      for (int64_t i = i0; i < i1; ++i) {
        const uint64_t* q = reinterpret_cast<const uint64_t*>(p + 64 * i);
        a ^= q[0] ^ q[7];
      }
      s = static_cast<double>(a & 0xffff);
    }
    part[at::get_thread_num() * 8] += s;
  });
  double s = 0.0;
  for (double v : part) s += v;
  return s;
}

}  // namespace
}  // namespace dk

using namespace dk;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("isa", &detect_isa, "the best ISA level this CPU runs: 0 scalar, 1 AVX2+FMA, 2 AVX512-BF16");
  m.def("gemv", &gemv, "x (B, K) @ w (N, K)^T (+ bias)", py::arg("x"), py::arg("w"), py::arg("bias") = py::none(),
        py::arg("isa") = -1);
  m.def("gated", &gated, "act(x wg^T) * (x wu^T)", py::arg("x"), py::arg("wg"), py::arg("wu"), py::arg("act"),
        py::arg("isa") = -1);
  m.def("cats", &cats, "(CATS a: act(x wg^T) kept where |.| >= t, times x wu^T read only there; kept per row)", py::arg("x"), py::arg("wg"), py::arg("wu"),
        py::arg("t"), py::arg("act"), py::arg("isa") = -1);
  m.def("sparse", &sparse, "(x' (B, K) @ wt (K, N), active inputs per row), x' = x where x != 0 and |x| >= t", py::arg("x"), py::arg("wt"), py::arg("t"),
        py::arg("bias") = py::none(), py::arg("isa") = -1);
  m.def("sparse_gated", &sparse_gated, "(act(xg' wgt) * (xu' wut), active inputs (2, B)), K-major weights", py::arg("xg"), py::arg("xu"),
        py::arg("t"), py::arg("wgt"), py::arg("wut"), py::arg("act"), py::arg("isa") = -1);
  m.def("rms_norm", &rms_norm, "(x + add, RMSNorm of it): the residual add (optional) and the norm, fused",
        py::arg("x"), py::arg("add"), py::arg("w"), py::arg("eps"));
  m.def("attend", &attend, "one token's attention after its qkv projection (rope, cache write, softmax, values)",
        py::arg("qkv"), py::arg("kc"), py::arg("vc"), py::arg("pos"), py::arg("cos"), py::arg("sin"), py::arg("H"),
        py::arg("Hkv"), py::arg("scale"));
  m.def("move_", &move_, "t[dst] = t[src] along dim 0 or 1, in place (dst None: src is a permutation)",
        py::arg("t"), py::arg("dim"), py::arg("dst"), py::arg("src"));
  m.def("read_pass", &read_pass, "one read-only pass over a buffer");
}
