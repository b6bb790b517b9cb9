// Sparse-input GEMV for per-token methods: weights K-major (K, N), one contiguous row per input channel; only the
// rows of active inputs (x != 0 and |x| >= t) are read, AXPY-style into fp32 accumulators. Up to N = 16384 outputs
// (every FFN projection here) each thread takes a share of the active rows whole into its own buffer and the
// buffers are summed in a fixed order (PowerInfer's CPU scheme); wider outputs: each thread owns a slice of the
// output columns. No atomics, no gathered copy of the weights.
#include "common.h"

namespace dk {
namespace {

// ------------------------------------------------------------------------------------------ sparse input (AXPY)
// acc[j] += sum_r c[r] * rows[r][j], j < len: the weight rows of active inputs, K-major
template <typename T>
void axpy_scalar(float* acc, int64_t len, const T* const* rows, const float* c, int nr) {
  for (int r = 0; r < nr; ++r) {
    const T* w = rows[r];
    const float cr = c[r];
    for (int64_t j = 0; j < len; ++j) acc[j] += cr * to_f<T>(w[j]);
  }
}

#if DART_X86
template <typename T>
__attribute__((target("avx2,fma"))) void axpy_avx2(float* acc, int64_t len, const T* const* rows, const float* c,
                                                   int nr) {
  int r = 0;
  for (; r + 4 <= nr; r += 4) {
    const __m256 c0 = _mm256_set1_ps(c[r]), c1 = _mm256_set1_ps(c[r + 1]), c2 = _mm256_set1_ps(c[r + 2]),
                 c3 = _mm256_set1_ps(c[r + 3]);
    const T *w0 = rows[r], *w1 = rows[r + 1], *w2 = rows[r + 2], *w3 = rows[r + 3];
    int64_t j = 0;
    for (; j + 8 <= len; j += 8) {
      __m256 a = _mm256_loadu_ps(acc + j);
      a = _mm256_fmadd_ps(c0, load8<T>(w0 + j), a);
      a = _mm256_fmadd_ps(c1, load8<T>(w1 + j), a);
      a = _mm256_fmadd_ps(c2, load8<T>(w2 + j), a);
      a = _mm256_fmadd_ps(c3, load8<T>(w3 + j), a);
      _mm256_storeu_ps(acc + j, a);
    }
    for (; j < len; ++j)
      acc[j] += c[r] * to_f<T>(w0[j]) + c[r + 1] * to_f<T>(w1[j]) + c[r + 2] * to_f<T>(w2[j]) + c[r + 3] * to_f<T>(w3[j]);
  }
  for (; r < nr; ++r) {
    const __m256 c0 = _mm256_set1_ps(c[r]);
    const T* w0 = rows[r];
    int64_t j = 0;
    for (; j + 8 <= len; j += 8)
      _mm256_storeu_ps(acc + j, _mm256_fmadd_ps(c0, load8<T>(w0 + j), _mm256_loadu_ps(acc + j)));
    for (; j < len; ++j) acc[j] += c[r] * to_f<T>(w0[j]);
  }
}

template <typename T> __attribute__((target("avx512f,avx512bw"))) inline __m512 load16(const T* p);
template <> __attribute__((target("avx512f,avx512bw"))) inline __m512 load16<float>(const float* p) {
  return _mm512_loadu_ps(p);
}
template <> __attribute__((target("avx512f,avx512bw"))) inline __m512 load16<uint16_t>(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

template <typename T>
__attribute__((target("avx512f,avx512bw"))) void axpy_512(float* acc, int64_t len, const T* const* rows,
                                                          const float* c, int nr) {
  int r = 0;
  for (; r + 4 <= nr; r += 4) {
    const __m512 c0 = _mm512_set1_ps(c[r]), c1 = _mm512_set1_ps(c[r + 1]), c2 = _mm512_set1_ps(c[r + 2]),
                 c3 = _mm512_set1_ps(c[r + 3]);
    const T *w0 = rows[r], *w1 = rows[r + 1], *w2 = rows[r + 2], *w3 = rows[r + 3];
    int64_t j = 0;
    for (; j + 32 <= len; j += 32) {
      __m512 a = _mm512_loadu_ps(acc + j), b = _mm512_loadu_ps(acc + j + 16);
      a = _mm512_fmadd_ps(c0, load16<T>(w0 + j), a);
      b = _mm512_fmadd_ps(c0, load16<T>(w0 + j + 16), b);
      a = _mm512_fmadd_ps(c1, load16<T>(w1 + j), a);
      b = _mm512_fmadd_ps(c1, load16<T>(w1 + j + 16), b);
      a = _mm512_fmadd_ps(c2, load16<T>(w2 + j), a);
      b = _mm512_fmadd_ps(c2, load16<T>(w2 + j + 16), b);
      a = _mm512_fmadd_ps(c3, load16<T>(w3 + j), a);
      b = _mm512_fmadd_ps(c3, load16<T>(w3 + j + 16), b);
      _mm512_storeu_ps(acc + j, a);
      _mm512_storeu_ps(acc + j + 16, b);
    }
    for (; j < len; ++j)
      acc[j] += c[r] * to_f<T>(w0[j]) + c[r + 1] * to_f<T>(w1[j]) + c[r + 2] * to_f<T>(w2[j]) + c[r + 3] * to_f<T>(w3[j]);
  }
  for (; r < nr; ++r) {
    const __m512 c0 = _mm512_set1_ps(c[r]);
    const T* w0 = rows[r];
    int64_t j = 0;
    for (; j + 32 <= len; j += 32) {
      _mm512_storeu_ps(acc + j, _mm512_fmadd_ps(c0, load16<T>(w0 + j), _mm512_loadu_ps(acc + j)));
      _mm512_storeu_ps(acc + j + 16, _mm512_fmadd_ps(c0, load16<T>(w0 + j + 16), _mm512_loadu_ps(acc + j + 16)));
    }
    for (; j + 16 <= len; j += 16)
      _mm512_storeu_ps(acc + j, _mm512_fmadd_ps(c0, load16<T>(w0 + j), _mm512_loadu_ps(acc + j)));
    for (; j < len; ++j) acc[j] += c[r] * to_f<T>(w0[j]);
  }
}
#endif

template <typename T>
inline void axpy(float* acc, int64_t len, const T* const* rows, const float* c, int nr, int isa) {
#if DART_X86
  if (isa == AVX512) return axpy_512<T>(acc, len, rows, c, nr);
  if (isa == AVX2) return axpy_avx2<T>(acc, len, rows, c, nr);
#endif
  axpy_scalar<T>(acc, len, rows, c, nr);
}

// The active inputs of each batch row: x[b, k] != 0 and |x[b, k]| >= t, as (index, value) lists
template <typename T>
void active_lists(const T* X, int64_t ldx, int64_t B, int64_t K, float t, std::vector<std::vector<int32_t>>& idx,
                  std::vector<std::vector<float>>& val) {
  idx.assign(B, {});
  val.assign(B, {});
  for (int64_t b = 0; b < B; ++b) {
    idx[b].reserve(K);
    val[b].reserve(K);
    for (int64_t k = 0; k < K; ++k) {
      const float v = to_f<T>(X[b * ldx + k]);
      if (v != 0.f && std::fabs(v) >= t) {
        idx[b].push_back(static_cast<int32_t>(k));
        val[b].push_back(v);
      }
    }
  }
}

constexpr int GROUP = 16;  // active rows per AXPY call

// columns per parallel task: a multiple of 32, one contiguous slice per thread
inline int64_t grain_cols(int64_t N) {
  const int64_t t = std::max<int64_t>(1, at::get_num_threads());
  int64_t g = (N + t - 1) / t;
  return std::max<int64_t>(32, (g + 31) / 32 * 32);
}

#if DART_X86
// bf16 rows two at a time with one dot-product instruction: the pair's elements interleaved (unpacklo/hi within
// 128-bit lanes), so accp holds each block of 32 outputs in the order {0-3, 8-11, 16-19, 24-27 | 4-7, ...}:
// accp[0:16] = lo half, accp[16:32] = hi half. len32: a multiple of 32. P pairs per pass over the outputs.
template <int P>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void axpy_pairs_512(float* accp, int64_t len32,
                                                                            const uint16_t* const* rows,
                                                                            const uint32_t* xpair) {
  __m512i xv[P];
  for (int p = 0; p < P; ++p) xv[p] = _mm512_set1_epi32(static_cast<int>(xpair[p]));
  for (int64_t j = 0; j < len32; j += 32) {
    __m512 lo = _mm512_loadu_ps(accp + j), hi = _mm512_loadu_ps(accp + j + 16);
    for (int p = 0; p < P; ++p) {
      const __m512i a = _mm512_loadu_si512(rows[2 * p] + j), b = _mm512_loadu_si512(rows[2 * p + 1] + j);
      lo = _mm512_dpbf16_ps(lo, (__m512bh)_mm512_unpacklo_epi16(a, b), (__m512bh)xv[p]);
      hi = _mm512_dpbf16_ps(hi, (__m512bh)_mm512_unpackhi_epi16(a, b), (__m512bh)xv[p]);
    }
    _mm512_storeu_ps(accp + j, lo);
    _mm512_storeu_ps(accp + j + 16, hi);
  }
}
#endif

inline int64_t pair_order(int64_t i) {  // where output i of a 32-block sits in the paired accumulator
  const int64_t blk = i & ~int64_t(31), e = i & 31, lane = e >> 3, half = (e >> 2) & 1, q = e & 3;
  return blk + half * 16 + lane * 4 + q;
}

// acc[0 : n1 - n0] = sum over the active list of val * Wt[idx, n0 : n1]
template <typename T>
void accumulate(float* acc, const T* Wt, int64_t ldw, int64_t n0, int64_t n1, const int32_t* idx, const float* val,
                size_t m, int isa) {
  const int64_t len = n1 - n0;
  std::fill(acc, acc + len, 0.f);
  const T* rows[GROUP];
#if DART_X86
  if constexpr (std::is_same<T, uint16_t>::value) {
    const int64_t len32 = len / 32 * 32;
    if (isa == AVX512 && len32 > 0) {
      std::vector<float> accp(len32, 0.f);
      constexpr int P = 4;  // pairs per pass
      const uint16_t* pr[2 * P];
      uint32_t xp[P];
      size_t i = 0;
      for (; i < m; i += 2 * P) {
        const int nr = static_cast<int>(std::min<size_t>(2 * P, m - i));
        for (int r = 0; r < 2 * P; ++r) {
          const size_t k = i + std::min(r, nr - 1);  // a missing row: the last one again, with coefficient 0
          pr[r] = Wt + static_cast<int64_t>(idx[k]) * ldw + n0;
        }
        for (int p = 0; p < P; ++p) {
          const uint32_t a = 2 * p < nr ? f2bf(val[i + 2 * p]) : 0u, b = 2 * p + 1 < nr ? f2bf(val[i + 2 * p + 1]) : 0u;
          xp[p] = a | (b << 16);
        }
        axpy_pairs_512<P>(accp.data(), len32, pr, xp);
      }
      for (int64_t j = 0; j < len32; ++j) acc[j] = accp[pair_order(j)];
      if (len32 < len)  // the last columns (a slice not a multiple of 32)
        for (size_t i2 = 0; i2 < m; i2 += GROUP) {
          const int nr = static_cast<int>(std::min<size_t>(GROUP, m - i2));
          for (int r = 0; r < nr; ++r) rows[r] = Wt + static_cast<int64_t>(idx[i2 + r]) * ldw + n0 + len32;
          axpy<T>(acc + len32, len - len32, rows, val + i2, nr, isa);
        }
      return;
    }
  }
#endif
  for (size_t i = 0; i < m; i += GROUP) {
    const int nr = static_cast<int>(std::min<size_t>(GROUP, m - i));
    for (int r = 0; r < nr; ++r) rows[r] = Wt + static_cast<int64_t>(idx[i + r]) * ldw + n0;
    axpy<T>(acc, len, rows, val + i, nr, isa);
  }
}

template <typename T>
void accumulate(float* acc, const T* Wt, int64_t ldw, int64_t n0, int64_t n1, const std::vector<int32_t>& idx,
                const std::vector<float>& val, int isa) {
  accumulate<T>(acc, Wt, ldw, n0, n1, idx.data(), val.data(), idx.size(), isa);
}

// Each thread takes a share of the active rows whole (long sequential reads) into its own fp32 buffer, and the
// buffers are summed in thread order (deterministic for a given thread count). out_f (B, N) fp32. Measured on the
// 1.5B model's shapes: faster than output slices (a row split between threads is two shorter reads), for the down
// projection's short rows (D) as for gate and up's long ones (I).
inline bool split_rows(int64_t N) { return at::get_num_threads() > 1 && N <= 16384; }

template <typename T>
void accumulate_split(float* out_f, const T* Wt, int64_t ldw, int64_t N, const std::vector<std::vector<int32_t>>& idx,
                      const std::vector<std::vector<float>>& val, int isa) {
  const int64_t B = idx.size(), t = std::max<int64_t>(1, at::get_num_threads());
  std::vector<float> part(t * B * N, 0.f);
  at::parallel_for(0, t, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t th = t0; th < t1; ++th)
      for (int64_t b = 0; b < B; ++b) {
        const size_t m = idx[b].size(), lo = m * th / t, hi = m * (th + 1) / t;
        accumulate<T>(part.data() + (th * B + b) * N, Wt, ldw, 0, N, idx[b].data() + lo, val[b].data() + lo, hi - lo, isa);
      }
  });
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n) {
      float s = 0.f;
      for (int64_t th = 0; th < t; ++th) s += part[(th * B + b) * N + n];
      out_f[b * N + n] = s;
    }
}

template <typename T>
void sparse_impl(const torch::Tensor& x, const torch::Tensor& wt, double t, const c10::optional<torch::Tensor>& bias,
                 torch::Tensor& out, int32_t* active, int isa) {
  const int64_t B = x.size(0), K = x.size(1), N = wt.size(1), ldw = wt.stride(0), ldo = out.stride(0);
  std::vector<std::vector<int32_t>> idx;
  std::vector<std::vector<float>> val;
  active_lists<T>(data<T>(x), x.stride(0), B, K, static_cast<float>(t), idx, val);
  for (int64_t b = 0; b < B; ++b) active[b] = static_cast<int32_t>(idx[b].size());
  const T* Wt = data<T>(wt);
  const T* bp = (bias && bias->defined()) ? data<T>(*bias) : nullptr;
  T* O = mdata<T>(out);
  if (split_rows(N)) {
    std::vector<float> f(B * N);
    accumulate_split<T>(f.data(), Wt, ldw, N, idx, val, isa);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t n = 0; n < N; ++n) O[b * ldo + n] = from_f<T>(f[b * N + n] + (bp ? to_f<T>(bp[n]) : 0.f));
    return;
  }
  at::parallel_for(0, N, grain_cols(N), [&](int64_t n0, int64_t n1) {
    std::vector<float> acc(n1 - n0);
    for (int64_t b = 0; b < B; ++b) {
      accumulate<T>(acc.data(), Wt, ldw, n0, n1, idx[b], val[b], isa);
      for (int64_t n = n0; n < n1; ++n) O[b * ldo + n] = from_f<T>(acc[n - n0] + (bp ? to_f<T>(bp[n]) : 0.f));
    }
  });
}

// gated FFN input from sparse inputs: a = act(xg' Wg) * (xu' Wu), Wg and Wu K-major (K, N); x' = x where
// x != 0 and |x| >= t (xg and xu may be the same tensor: TEAL; or two top-k masked copies: WINA)
template <typename T>
void sparse_gated_impl(const torch::Tensor& xg, const torch::Tensor& xu, double t, const torch::Tensor& wgt,
                       const torch::Tensor& wut, torch::Tensor& out, int32_t* active, int act, int isa) {
  const int64_t B = xg.size(0), K = xg.size(1), N = wgt.size(1), ldo = out.stride(0);
  std::vector<std::vector<int32_t>> ig, iu;
  std::vector<std::vector<float>> vg, vu;
  active_lists<T>(data<T>(xg), xg.stride(0), B, K, static_cast<float>(t), ig, vg);
  const bool same = xg.data_ptr() == xu.data_ptr() && xg.strides() == xu.strides();
  if (!same) active_lists<T>(data<T>(xu), xu.stride(0), B, K, static_cast<float>(t), iu, vu);
  for (int64_t b = 0; b < B; ++b) {
    active[b] = static_cast<int32_t>(ig[b].size());
    active[B + b] = static_cast<int32_t>((same ? ig : iu)[b].size());
  }
  const T* G = data<T>(wgt);
  const T* U = data<T>(wut);
  T* O = mdata<T>(out);
  if (split_rows(N)) {
    std::vector<float> g(B * N), u(B * N);
    accumulate_split<T>(g.data(), G, wgt.stride(0), N, ig, vg, isa);
    accumulate_split<T>(u.data(), U, wut.stride(0), N, same ? ig : iu, same ? vg : vu, isa);
    for (int64_t b = 0; b < B; ++b) {
      float* gb = g.data() + b * N;
      const float* ub = u.data() + b * N;
      for (int64_t i = 0; i < N; ++i) {
        gb[i] = round_as<T>(gb[i]);
        u[b * N + i] = round_as<T>(ub[i]);
      }
      act_mul<T>(gb, ub, N, act, isa);
      for (int64_t i = 0; i < N; ++i) O[b * ldo + i] = from_f<T>(gb[i]);
    }
    return;
  }
  at::parallel_for(0, N, grain_cols(N), [&](int64_t n0, int64_t n1) {
    const int64_t len = n1 - n0;
    std::vector<float> g(len), u(len);
    for (int64_t b = 0; b < B; ++b) {
      accumulate<T>(g.data(), G, wgt.stride(0), n0, n1, ig[b], vg[b], isa);
      accumulate<T>(u.data(), U, wut.stride(0), n0, n1, same ? ig[b] : iu[b], same ? vg[b] : vu[b], isa);
      for (int64_t i = 0; i < len; ++i) {
        g[i] = round_as<T>(g[i]);
        u[i] = round_as<T>(u[i]);
      }
      act_mul<T>(g.data(), u.data(), len, act, isa);
      for (int64_t i = 0; i < len; ++i) O[b * ldo + n0 + i] = from_f<T>(g[i]);
    }
  });
}

}  // namespace

std::vector<torch::Tensor> sparse(const torch::Tensor& x, const torch::Tensor& wt, double t,
                                  const c10::optional<torch::Tensor>& bias, int64_t isa) {
  check_weight(wt, x, "K-major weight (K, N)");
  check_x(x, wt.size(0));
  const int level = resolve_isa(isa);
  auto out = torch::empty({x.size(0), wt.size(1)}, x.options());
  auto active = torch::empty({x.size(0)}, x.options().dtype(at::kInt));
  if (x.scalar_type() == at::kBFloat16)
    sparse_impl<uint16_t>(x, wt, t, bias, out, active.data_ptr<int32_t>(), level);
  else
    sparse_impl<float>(x, wt, t, bias, out, active.data_ptr<int32_t>(), level);
  return {out, active};
}

std::vector<torch::Tensor> sparse_gated(const torch::Tensor& xg, const torch::Tensor& xu, double t,
                                        const torch::Tensor& wgt, const torch::Tensor& wut, int64_t act, int64_t isa) {
  check_weight(wgt, xg, "K-major gate (K, N)");
  check_weight(wut, xu, "K-major up (K, N)");
  check_x(xg, wgt.size(0));
  check_x(xu, wut.size(0));
  TORCH_CHECK(wgt.sizes() == wut.sizes() && xg.sizes() == xu.sizes(), "dart kernels: gate and up differ in shape");
  const int level = resolve_isa(isa);
  auto out = torch::empty({xg.size(0), wgt.size(1)}, xg.options());
  auto active = torch::empty({2, xg.size(0)}, xg.options().dtype(at::kInt));  // active inputs of gate, of up
  if (xg.scalar_type() == at::kBFloat16)
    sparse_gated_impl<uint16_t>(xg, xu, t, wgt, wut, out, active.data_ptr<int32_t>(), static_cast<int>(act), level);
  else
    sparse_gated_impl<float>(xg, xu, t, wgt, wut, out, active.data_ptr<int32_t>(), static_cast<int>(act), level);
  return {out, active};
}

}  // namespace dk
