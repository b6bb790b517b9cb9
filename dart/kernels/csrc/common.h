// Shared by the decode kernels (dense.cpp, sparse.cpp, attention.cpp, permute.cpp, bind.cpp): the ISA levels, bf16 <-> fp32, the activations
// as torch computes them, the input vector, batch dispatch and argument checks.
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define DART_X86 1
#else
#define DART_X86 0
#endif

namespace dk {

enum Isa : int { SCALAR = 0, AVX2 = 1, AVX512 = 2 };
enum Act : int { SILU = 0, GELU_TANH = 1, RELU = 2, GELU_ERF = 3 };

inline int probe_isa() {
#if DART_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16"))
    return AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return AVX2;
#endif
  return SCALAR;
}

inline int detect_isa() {
  static const int best = probe_isa();
  return best;
}

inline int resolve_isa(int64_t isa) {
  const int best = detect_isa();
  if (isa < 0) return best;
  TORCH_CHECK(isa <= best, "dart kernels: ISA level ", isa, " asked for, this CPU supports up to ", best);
  return static_cast<int>(isa);
}

// ------------------------------------------------------------------------------------------ scalar helpers
inline float bf2f(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f2bf(float f) {  // round to nearest even, as c10::BFloat16
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

template <typename T> inline float to_f(T v);
template <> inline float to_f<float>(float v) { return v; }
template <> inline float to_f<uint16_t>(uint16_t v) { return bf2f(v); }

template <typename T> inline T from_f(float v);
template <> inline float from_f<float>(float v) { return v; }
template <> inline uint16_t from_f<uint16_t>(float v) { return f2bf(v); }

// rounding to the storage type, as a torch op on tensors of that type rounds its output
template <typename T> inline float round_as(float v) { return to_f<T>(from_f<T>(v)); }

inline float act_scalar(float g, int act) {
  switch (act) {
    case SILU: return g / (1.0f + std::exp(-g));
    case GELU_TANH: {
      const float y = 0.7978845608028654f * (g + 0.044715f * g * g * g);
      return 0.5f * g * (1.0f + std::tanh(y));
    }
    case RELU: return g > 0.f ? g : 0.f;
    default: return 0.5f * g * (1.0f + std::erf(g * 0.7071067811865476f));
  }
}

// ------------------------------------------------------------------------------------------ vector exp / act
#if DART_X86
__attribute__((target("avx512f"))) inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.3762626647949f)), _mm512_set1_ps(-87.3365447504f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

__attribute__((target("avx512f"))) inline __m512 act512(__m512 g, int act) {
  const __m512 one = _mm512_set1_ps(1.0f);
  switch (act) {
    case SILU: return _mm512_div_ps(g, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    case GELU_TANH: {  // 0.5 g (1 + tanh(y)) = g * (1 - 1 / (exp(2y) + 1))
      const __m512 y = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f),
                                     _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), g), _mm512_mul_ps(g, g), g));
      const __m512 e = exp512(_mm512_add_ps(y, y));
      return _mm512_mul_ps(g, _mm512_sub_ps(one, _mm512_div_ps(one, _mm512_add_ps(e, one))));
    }
    default: return _mm512_max_ps(g, _mm512_setzero_ps());
  }
}
#endif

#if DART_X86
// the vectorised part of act_mul: returns how many leading values it did
template <typename T>
__attribute__((target("avx512f"))) int64_t act_mul_512(float* g, const float* u, int64_t n, int act) {
  int64_t i = 0;
  if (std::is_same<T, float>::value) {
    for (; i + 16 <= n; i += 16) {
      const __m512 a = act512(_mm512_loadu_ps(g + i), act);
      _mm512_storeu_ps(g + i, _mm512_mul_ps(a, _mm512_loadu_ps(u + i)));
    }
    return i;
  }
  alignas(64) float tmp[16];
  for (; i + 16 <= n; i += 16) {  // bf16: the act vectorised, the rounding points exact
    _mm512_store_ps(tmp, act512(_mm512_loadu_ps(g + i), act));
    for (int j = 0; j < 16; ++j) g[i + j] = round_as<T>(round_as<T>(tmp[j]) * u[i + j]);
  }
  return i;
}
#endif

// act(g) * u over n values in place of g, each rounded as torch rounds a tensor of type T after every op
template <typename T>
void act_mul(float* g, const float* u, int64_t n, int act, int isa) {
  int64_t i = 0;
#if DART_X86
  if (isa == AVX512 && act != GELU_ERF) i = act_mul_512<T>(g, u, n, act);
#endif
  for (; i < n; ++i) g[i] = round_as<T>(round_as<T>(act_scalar(g[i], act)) * u[i]);
}

#if DART_X86
__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <typename T> __attribute__((target("avx2,fma"))) inline __m256 load8(const T* p);
template <> __attribute__((target("avx2,fma"))) inline __m256 load8<float>(const float* p) { return _mm256_loadu_ps(p); }
template <> __attribute__((target("avx2,fma"))) inline __m256 load8<uint16_t>(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}

#endif

// The vector as the dot tiles read it: the weight's own type on the AVX512 paths, fp32 otherwise.
template <typename T>
struct Vec {
  const void* ptr;   // (B, ld) in the kernel's input type
  int64_t ld;
  std::vector<float> f32;  // kept alive for the AVX2 / scalar paths
};

template <typename T>
Vec<T> prepare_vec(const T* x, int64_t B, int64_t K, int64_t ldx, int isa) {
  Vec<T> v;
  if (isa == AVX512 || std::is_same<T, float>::value) {
    v.ptr = x;
    v.ld = ldx;
    return v;
  }
  v.f32.resize(B * K);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < K; ++k) v.f32[b * K + k] = to_f<T>(x[b * ldx + k]);
  v.ptr = v.f32.data();
  v.ld = K;
  return v;
}

template <typename T, typename F>
void with_batch(int64_t B, F&& f) {
  switch (B) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    default: TORCH_CHECK(false, "dart kernels: batch ", B, " is not supported (1 to 8)");
  }
}

// rows per parallel task: at least 64 (a task's launch costs about a microsecond), a multiple of 4
inline int64_t grain_rows(int64_t N) {
  const int64_t t = std::max<int64_t>(1, at::get_num_threads());
  int64_t g = (N + 4 * t - 1) / (4 * t);
  g = std::max<int64_t>(64, (g + 3) / 4 * 4);
  return g;
}

inline void check_weight(const torch::Tensor& w, const torch::Tensor& x, const char* what) {
  TORCH_CHECK(w.dim() == 2 && w.stride(1) == 1, "dart kernels: ", what, " must be 2-d with unit stride along its columns");
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), "dart kernels: ", what, " is ", w.scalar_type(), ", the input ",
              x.scalar_type());
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 || w.scalar_type() == at::kFloat,
              "dart kernels: bfloat16 or float32 only, not ", w.scalar_type());
  TORCH_CHECK(!w.is_cuda(), "dart kernels: CPU tensors only");
}

template <typename T>
const T* data(const torch::Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}
template <typename T>
T* mdata(torch::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

inline void check_x(const torch::Tensor& x, int64_t K) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "dart kernels: the input must be (B, K) with unit column stride");
  TORCH_CHECK(x.size(1) == K, "dart kernels: input width ", x.size(1), " != weight width ", K);
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= 8, "dart kernels: batch ", x.size(0), " is not supported (1 to 8)");
}

torch::Tensor gemv(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& bias, int64_t isa);
torch::Tensor gated(const torch::Tensor& x, const torch::Tensor& wg, const torch::Tensor& wu, int64_t act, int64_t isa);
std::vector<torch::Tensor> cats(const torch::Tensor& x, const torch::Tensor& wg, const torch::Tensor& wu, double t,
                                int64_t act, int64_t isa);
std::vector<torch::Tensor> sparse(const torch::Tensor& x, const torch::Tensor& wt, double t,
                                  const c10::optional<torch::Tensor>& bias, int64_t isa);
std::vector<torch::Tensor> sparse_gated(const torch::Tensor& xg, const torch::Tensor& xu, double t,
                                        const torch::Tensor& wgt, const torch::Tensor& wut, int64_t act, int64_t isa);
std::vector<torch::Tensor> rms_norm(const torch::Tensor& x, const c10::optional<torch::Tensor>& add,
                                    const torch::Tensor& w, double eps);
torch::Tensor attend(const torch::Tensor& qkv, torch::Tensor& kc, torch::Tensor& vc, int64_t pos,
                     const torch::Tensor& cos, const torch::Tensor& sin, int64_t H, int64_t Hkv, double scale);
void move_(torch::Tensor& t, int64_t dim, const c10::optional<torch::Tensor>& dst, const torch::Tensor& src);

}  // namespace dk
