// Dense GEMV / small-batch GEMM (batch 1 to 8) over row-major (N, K) weights with any row stride (a kept prefix of
// rows or columns), the gated FFN input act(x Wg^T) * (x Wu^T), and CATS's input (up read only where the gate is kept).
// Each thread owns a contiguous block of output rows: one sequential stream of weights.
#include "common.h"

namespace dk {
namespace {

// ------------------------------------------------------------------------------------------ dense dot tiles
// out[r * B + b] = sum_k W[r, k] x[b, k] for R rows (row stride ldw) and B vectors (stride ldx), fp32 sums.
// X is the vector in the weight's type for the AVX512 paths, fp32 (pre-converted) for AVX2 and scalar.

template <typename T, int B, int R>
void dot_scalar(const T* W, int64_t ldw, const float* X, int64_t ldx, int64_t K, float* out) {
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) {
      float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
      const T* w = W + r * ldw;
      const float* x = X + b * ldx;
      int64_t k = 0;
      for (; k + 4 <= K; k += 4) {
        s0 += to_f<T>(w[k]) * x[k];
        s1 += to_f<T>(w[k + 1]) * x[k + 1];
        s2 += to_f<T>(w[k + 2]) * x[k + 2];
        s3 += to_f<T>(w[k + 3]) * x[k + 3];
      }
      for (; k < K; ++k) s0 += to_f<T>(w[k]) * x[k];
      out[r * B + b] = (s0 + s1) + (s2 + s3);
    }
}

#if DART_X86
template <typename T, int B, int R>
__attribute__((target("avx2,fma"))) void dot_avx2(const T* W, int64_t ldw, const float* X, int64_t ldx, int64_t K,
                                                  float* out) {
  __m256 acc[R][B];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) acc[r][b] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 xv[B];
    for (int b = 0; b < B; ++b) xv[b] = _mm256_loadu_ps(X + b * ldx + k);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = load8<T>(W + r * ldw + k);
      for (int b = 0; b < B; ++b) acc[r][b] = _mm256_fmadd_ps(wv, xv[b], acc[r][b]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) {
      float s = hsum256(acc[r][b]);
      for (int64_t j = k; j < K; ++j) s += to_f<T>(W[r * ldw + j]) * X[b * ldx + j];
      out[r * B + b] = s;
    }
}

// R rows (stride ldw) x B vectors, U independent accumulators along k
template <int B, int R, int U>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void dot_bf16_512(const uint16_t* W, int64_t ldw,
                                                                                  const uint16_t* X, int64_t ldx,
                                                                                  int64_t K, float* out) {
  __m512 acc[U][R][B];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < R; ++r)
      for (int b = 0; b < B; ++b) acc[u][r][b] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 * U <= K; k += 32 * U) {
    for (int u = 0; u < U; ++u) {
      __m512i xv[B];
      for (int b = 0; b < B; ++b) xv[b] = _mm512_loadu_si512(X + b * ldx + k + 32 * u);
      for (int r = 0; r < R; ++r) {
        const __m512i wv = _mm512_loadu_si512(W + r * ldw + k + 32 * u);
        for (int b = 0; b < B; ++b) acc[u][r][b] = _mm512_dpbf16_ps(acc[u][r][b], (__m512bh)wv, (__m512bh)xv[b]);
      }
    }
  }
  for (; k < K; k += 32) {
    const __mmask32 m = K - k >= 32 ? ~__mmask32(0) : static_cast<__mmask32>((1ull << (K - k)) - 1);
    __m512i xv[B];
    for (int b = 0; b < B; ++b) xv[b] = _mm512_maskz_loadu_epi16(m, X + b * ldx + k);
    for (int r = 0; r < R; ++r) {
      const __m512i wv = _mm512_maskz_loadu_epi16(m, W + r * ldw + k);
      for (int b = 0; b < B; ++b) acc[0][r][b] = _mm512_dpbf16_ps(acc[0][r][b], (__m512bh)wv, (__m512bh)xv[b]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) {
      __m512 s = acc[0][r][b];
      for (int u = 1; u < U; ++u) s = _mm512_add_ps(s, acc[u][r][b]);
      out[r * B + b] = _mm512_reduce_add_ps(s);
    }
}

template <int B, int R, int U>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void dot_f32_512(const float* W, int64_t ldw, const float* X,
                                                                      int64_t ldx, int64_t K, float* out) {
  __m512 acc[U][R][B];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < R; ++r)
      for (int b = 0; b < B; ++b) acc[u][r][b] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 * U <= K; k += 16 * U) {
    for (int u = 0; u < U; ++u) {
      __m512 xv[B];
      for (int b = 0; b < B; ++b) xv[b] = _mm512_loadu_ps(X + b * ldx + k + 16 * u);
      for (int r = 0; r < R; ++r) {
        const __m512 wv = _mm512_loadu_ps(W + r * ldw + k + 16 * u);
        for (int b = 0; b < B; ++b) acc[u][r][b] = _mm512_fmadd_ps(wv, xv[b], acc[u][r][b]);
      }
    }
  }
  for (; k < K; k += 16) {
    const __mmask16 m = K - k >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (K - k)) - 1);
    __m512 xv[B];
    for (int b = 0; b < B; ++b) xv[b] = _mm512_maskz_loadu_ps(m, X + b * ldx + k);
    for (int r = 0; r < R; ++r) {
      const __m512 wv = _mm512_maskz_loadu_ps(m, W + r * ldw + k);
      for (int b = 0; b < B; ++b) acc[0][r][b] = _mm512_fmadd_ps(wv, xv[b], acc[0][r][b]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) {
      __m512 s = acc[0][r][b];
      for (int u = 1; u < U; ++u) s = _mm512_add_ps(s, acc[u][r][b]);
      out[r * B + b] = _mm512_reduce_add_ps(s);
    }
}
#endif

// R rows x B vectors, dispatched on the ISA (R = 4 rows per tile, or 1 for a tile's remainder)
template <typename T, int B, int R>
inline void dot_tile(const T* W, int64_t ldw, const Vec<T>& x, int64_t K, float* out, int isa) {
#if DART_X86
  if (isa == AVX512) {
    if constexpr (std::is_same<T, uint16_t>::value)
      dot_bf16_512<B, R, 1>(W, ldw, static_cast<const uint16_t*>(x.ptr), x.ld, K, out);
    else
      dot_f32_512<B, R, 1>(W, ldw, static_cast<const float*>(x.ptr), x.ld, K, out);
    return;
  }
  if (isa == AVX2) {
    dot_avx2<T, B, R>(W, ldw, static_cast<const float*>(x.ptr), x.ld, K, out);
    return;
  }
#endif
  dot_scalar<T, B, R>(W, ldw, static_cast<const float*>(x.ptr), x.ld, K, out);
}

constexpr int tile_rows(int B) { return B <= 2 ? 4 : (B <= 4 ? 2 : 1); }

// dots[(n - n0) * B + b] = W[n] . x[b] for rows n in [n0, n1)
template <typename T, int B>
void dots_range(const T* W, int64_t ldw, const Vec<T>& x, int64_t K, int64_t n0, int64_t n1, float* dots, int isa) {
  constexpr int R = tile_rows(B);
  int64_t n = n0;
#if DART_X86
  if (isa == AVX512) {  // one row at a time (a thread's rows are one sequential stream) unless the batch needs the
    // vector loads shared by several rows; chosen by measurement on a Zen 4 (docs/performance.md)
    constexpr int RR = B <= 4 ? 1 : 4, UU = B <= 2 ? 2 : 1;
    for (; n + RR <= n1; n += RR) {
      if constexpr (std::is_same<T, uint16_t>::value)
        dot_bf16_512<B, RR, UU>(W + n * ldw, ldw, static_cast<const uint16_t*>(x.ptr), x.ld, K, dots + (n - n0) * B);
      else
        dot_f32_512<B, RR, UU>(W + n * ldw, ldw, static_cast<const float*>(x.ptr), x.ld, K, dots + (n - n0) * B);
    }
    for (; n < n1; ++n) {
      if constexpr (std::is_same<T, uint16_t>::value)
        dot_bf16_512<B, 1, UU>(W + n * ldw, ldw, static_cast<const uint16_t*>(x.ptr), x.ld, K, dots + (n - n0) * B);
      else
        dot_f32_512<B, 1, UU>(W + n * ldw, ldw, static_cast<const float*>(x.ptr), x.ld, K, dots + (n - n0) * B);
    }
    return;
  }
#endif
  for (; n + R <= n1; n += R) dot_tile<T, B, R>(W + n * ldw, ldw, x, K, dots + (n - n0) * B, isa);
  for (; n < n1; ++n) dot_tile<T, B, 1>(W + n * ldw, ldw, x, K, dots + (n - n0) * B, isa);
}

// ------------------------------------------------------------------------------------------ dense GEMV
template <typename T>
void gemv_impl(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& bias,
               torch::Tensor& out, int isa) {
  const int64_t B = x.size(0), K = x.size(1), N = w.size(0), ldw = w.stride(0);
  const T* W = data<T>(w);
  const float* bp = nullptr;
  std::vector<float> bf;
  if (bias && bias->defined()) {
    bf.resize(N);
    const T* b = data<T>(*bias);
    for (int64_t n = 0; n < N; ++n) bf[n] = to_f<T>(b[n]);
    bp = bf.data();
  }
  const Vec<T> xv = prepare_vec<T>(data<T>(x), B, K, x.stride(0), isa);
  T* O = mdata<T>(out);
  const int64_t ldo = out.stride(0);
  with_batch<T>(B, [&](auto Bc) {
    constexpr int BB = decltype(Bc)::value;
    at::parallel_for(0, N, grain_rows(N), [&](int64_t n0, int64_t n1) {
      std::vector<float> dots((n1 - n0) * BB);
      dots_range<T, BB>(W, ldw, xv, K, n0, n1, dots.data(), isa);
      for (int64_t n = n0; n < n1; ++n)
        for (int b = 0; b < BB; ++b) O[b * ldo + n] = from_f<T>(dots[(n - n0) * BB + b] + (bp ? bp[n] : 0.f));
    });
  });
}

// ------------------------------------------------------------------------------------------ gated FFN input
// a = act(x Wg^T) * (x Wu^T), rounded as torch rounds each op's output in the weights' type
template <typename T>
void gated_impl(const torch::Tensor& x, const torch::Tensor& wg, const torch::Tensor& wu, torch::Tensor& out, int act,
                int isa) {
  const int64_t B = x.size(0), K = x.size(1), N = wg.size(0);
  const Vec<T> xv = prepare_vec<T>(data<T>(x), B, K, x.stride(0), isa);
  const T* G = data<T>(wg);
  const T* U = data<T>(wu);
  const int64_t ldg = wg.stride(0), ldu = wu.stride(0), ldo = out.stride(0);
  T* O = mdata<T>(out);
  with_batch<T>(B, [&](auto Bc) {
    constexpr int BB = decltype(Bc)::value;
    at::parallel_for(0, N, grain_rows(N), [&](int64_t n0, int64_t n1) {
      const int64_t n = n1 - n0;
      std::vector<float> g(n * BB), u(n * BB), gt(n), ut(n);
      dots_range<T, BB>(G, ldg, xv, K, n0, n1, g.data(), isa);
      dots_range<T, BB>(U, ldu, xv, K, n0, n1, u.data(), isa);
      for (int b = 0; b < BB; ++b) {
        for (int64_t i = 0; i < n; ++i) {
          gt[i] = round_as<T>(g[i * BB + b]);
          ut[i] = round_as<T>(u[i * BB + b]);
        }
        act_mul<T>(gt.data(), ut.data(), n, act, isa);
        for (int64_t i = 0; i < n; ++i) O[b * ldo + n0 + i] = from_f<T>(gt[i]);
      }
    });
  });
}

// CATS: g = act(x Wg^T) for every neuron; where |g| >= t, a = g * (x Wu^T) (up read for those rows only), else 0
template <typename T>
void cats_impl(const torch::Tensor& x, const torch::Tensor& wg, const torch::Tensor& wu, double t, torch::Tensor& out,
               int32_t* kept, int act, int isa) {
  const int64_t B = x.size(0), K = x.size(1), N = wg.size(0);
  const Vec<T> xv = prepare_vec<T>(data<T>(x), B, K, x.stride(0), isa);
  const T* G = data<T>(wg);
  const T* U = data<T>(wu);
  const int64_t ldg = wg.stride(0), ldu = wu.stride(0), ldo = out.stride(0);
  const float tf = static_cast<float>(t);
  T* O = mdata<T>(out);
  const int64_t nt = std::max<int64_t>(1, at::get_num_threads());
  std::vector<int64_t> part(nt * B, 0);  // kept neurons per thread and row, summed after the parallel loop
  with_batch<T>(B, [&](auto Bc) {
    constexpr int BB = decltype(Bc)::value;
    at::parallel_for(0, N, grain_rows(N), [&](int64_t n0, int64_t n1) {
      const int64_t n = n1 - n0;
      std::vector<float> g(n * BB), a(n), one(n, 1.0f);
      dots_range<T, BB>(G, ldg, xv, K, n0, n1, g.data(), isa);
      float ud[BB];
      for (int b = 0; b < BB; ++b) {
        for (int64_t i = 0; i < n; ++i) a[i] = round_as<T>(g[i * BB + b]);
        act_mul<T>(a.data(), one.data(), n, act, isa);  // act(g), rounded (times 1: exact)
        int64_t c = 0;
        for (int64_t i = 0; i < n; ++i) {
          g[i * BB + b] = std::fabs(a[i]) >= tf ? a[i] : 0.f;
          c += g[i * BB + b] != 0.f;
        }
        part[at::get_thread_num() * B + b] += c;
      }
      for (int64_t i = 0; i < n; ++i) {
        bool any = false;
        for (int b = 0; b < BB; ++b) any |= g[i * BB + b] != 0.f;
        if (!any) {
          for (int b = 0; b < BB; ++b) O[b * ldo + n0 + i] = from_f<T>(0.f);
          continue;
        }
        dot_tile<T, BB, 1>(U + (n0 + i) * ldu, ldu, xv, K, ud, isa);
        for (int b = 0; b < BB; ++b) O[b * ldo + n0 + i] = from_f<T>(g[i * BB + b] * round_as<T>(ud[b]));
      }
    });
  });
  for (int64_t b = 0; b < B; ++b) {
    int64_t c = 0;
    for (int64_t th = 0; th < nt; ++th) c += part[th * B + b];
    kept[b] = static_cast<int32_t>(c);
  }
}

}  // namespace

torch::Tensor gemv(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& bias,
                   int64_t isa) {
  check_weight(w, x, "weight (N, K)");
  check_x(x, w.size(1));
  const int level = resolve_isa(isa);
  auto out = torch::empty({x.size(0), w.size(0)}, x.options());
  if (x.scalar_type() == at::kBFloat16)
    gemv_impl<uint16_t>(x, w, bias, out, level);
  else
    gemv_impl<float>(x, w, bias, out, level);
  return out;
}

torch::Tensor gated(const torch::Tensor& x, const torch::Tensor& wg, const torch::Tensor& wu, int64_t act, int64_t isa) {
  check_weight(wg, x, "gate (N, K)");
  check_weight(wu, x, "up (N, K)");
  check_x(x, wg.size(1));
  TORCH_CHECK(wg.sizes() == wu.sizes(), "dart kernels: gate and up differ in shape");
  const int level = resolve_isa(isa);
  auto out = torch::empty({x.size(0), wg.size(0)}, x.options());
  if (x.scalar_type() == at::kBFloat16)
    gated_impl<uint16_t>(x, wg, wu, out, static_cast<int>(act), level);
  else
    gated_impl<float>(x, wg, wu, out, static_cast<int>(act), level);
  return out;
}

std::vector<torch::Tensor> cats(const torch::Tensor& x, const torch::Tensor& wg, const torch::Tensor& wu, double t,
                                int64_t act, int64_t isa) {
  check_weight(wg, x, "gate (N, K)");
  check_weight(wu, x, "up (N, K)");
  check_x(x, wg.size(1));
  const int level = resolve_isa(isa);
  auto out = torch::empty({x.size(0), wg.size(0)}, x.options());
  auto kept = torch::empty({x.size(0)}, x.options().dtype(at::kInt));
  if (x.scalar_type() == at::kBFloat16)
    cats_impl<uint16_t>(x, wg, wu, t, out, kept.data_ptr<int32_t>(), static_cast<int>(act), level);
  else
    cats_impl<float>(x, wg, wu, t, out, kept.data_ptr<int32_t>(), static_cast<int>(act), level);
  return {out, kept};
}

}  // namespace dk
