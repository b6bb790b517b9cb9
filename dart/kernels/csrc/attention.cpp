// The rest of a decode step, fused: RMSNorm (optionally after the residual add) and one token's self-attention after
// its q/k/v projection (rotary embedding, the KV-cache write, scores, softmax, the weighted values). At batch 1 these
// are a few hundred small torch ops per step, each costing more than its arithmetic; here they are one call each.
// Every intermediate is rounded where the lean loop's torch ops round it (dart/bench/lean.py), so the two agree to
// the order of fp32 additions.
#include "common.h"

namespace dk {
namespace {

// y = w * round(x * rsqrt(mean(x^2) + eps)) (bf16: normalised in fp32, cast, then scaled, as the module computes it;
// fp32: x * rsqrt(...) * w, as F.rms_norm with its weight)
template <typename T>
void rms_row(const T* x, const T* w, float eps, int64_t D, T* y) {
  double ss = 0.0;
  for (int64_t i = 0; i < D; ++i) {
    const float v = to_f<T>(x[i]);
    ss += static_cast<double>(v) * v;
  }
  const float r = 1.0f / std::sqrt(static_cast<float>(ss / D) + eps);
  for (int64_t i = 0; i < D; ++i) y[i] = from_f<T>(to_f<T>(w[i]) * round_as<T>(to_f<T>(x[i]) * r));
}

template <typename T>
void norm_impl(const torch::Tensor& x, const c10::optional<torch::Tensor>& a, const torch::Tensor& w, double eps,
               torch::Tensor& res, torch::Tensor& y) {
  const int64_t B = x.size(0), D = x.size(1);
  const T* X = data<T>(x);
  const T* W = data<T>(w);
  T* R = mdata<T>(res);
  T* Y = mdata<T>(y);
  for (int64_t b = 0; b < B; ++b) {
    const T* xb = X + b * x.stride(0);
    T* rb = R + b * D;
    if (a && a->defined()) {  // the residual add first, rounded as torch's add
      const T* ab = data<T>(*a) + b * a->stride(0);
      for (int64_t i = 0; i < D; ++i) rb[i] = from_f<T>(to_f<T>(xb[i]) + to_f<T>(ab[i]));
    } else {
      for (int64_t i = 0; i < D; ++i) rb[i] = xb[i];
    }
    rms_row<T>(rb, W, static_cast<float>(eps), D, Y + b * D);
  }
}

// One token per row: qkv (B, (H + 2 Hkv) hd) -> o (B, H hd). Rotary embedding on q and k as
// round(round(x cos) + round(rotate_half(x) sin)); k and v written at `pos` of the caches (B, Hkv, L, hd); scores
// round(round(q . k) * scale), softmax in fp32, probabilities rounded, o = round(sum p v).
template <typename T>
void attend_impl(const torch::Tensor& qkv, torch::Tensor& kc, torch::Tensor& vc, int64_t pos, const torch::Tensor& cos,
                 const torch::Tensor& sin, int64_t H, int64_t Hkv, double scale, torch::Tensor& o) {
  const int64_t B = qkv.size(0), hd = kc.size(3), half = hd / 2, G = H / Hkv, n = pos + 1;
  const T* QKV = data<T>(qkv);
  const T* C = data<T>(cos) + pos * cos.stride(0);
  const T* S = data<T>(sin) + pos * sin.stride(0);
  T* K = mdata<T>(kc);
  T* V = mdata<T>(vc);
  T* O = mdata<T>(o);
  const int64_t kb = kc.stride(0), kh = kc.stride(1), kl = kc.stride(2);
  const int64_t vb = vc.stride(0), vh = vc.stride(1), vl = vc.stride(2);
  auto rope = [&](const T* x, T* y) {
    for (int64_t i = 0; i < hd; ++i) {
      const float xi = to_f<T>(x[i]);
      const float rot = i < half ? -to_f<T>(x[i + half]) : to_f<T>(x[i - half]);
      y[i] = from_f<T>(round_as<T>(xi * to_f<T>(C[i])) + round_as<T>(rot * to_f<T>(S[i])));
    }
  };
  // the new token's keys and values into the caches
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hkv; ++h) {
      const T* row = QKV + b * qkv.stride(0);
      rope(row + (H + h) * hd, K + b * kb + h * kh + pos * kl);
      std::memcpy(V + b * vb + h * vh + pos * vl, row + (H + Hkv + h) * hd, hd * sizeof(T));
    }
  at::parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> q(hd), p(n), acc(hd);
    std::vector<T> qr(hd);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / H, h = i % H, g = h / G;
      rope(QKV + b * qkv.stride(0) + h * hd, qr.data());
      for (int64_t d = 0; d < hd; ++d) q[d] = to_f<T>(qr[d]);
      const T* Kh = K + b * kb + g * kh;
      const T* Vh = V + b * vb + g * vh;
      float mx = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        const T* kj = Kh + j * kl;
        float s = 0.f;
        for (int64_t d = 0; d < hd; ++d) s += q[d] * to_f<T>(kj[d]);
        p[j] = round_as<T>(round_as<T>(s) * static_cast<float>(scale));
        mx = std::max(mx, p[j]);
      }
      float sum = 0.f;
      for (int64_t j = 0; j < n; ++j) {
        p[j] = std::exp(p[j] - mx);
        sum += p[j];
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j = 0; j < n; ++j) {
        const float pj = round_as<T>(p[j] / sum);
        const T* vj = Vh + j * vl;
        for (int64_t d = 0; d < hd; ++d) acc[d] += pj * to_f<T>(vj[d]);
      }
      T* ob = O + b * o.stride(0) + h * hd;
      for (int64_t d = 0; d < hd; ++d) ob[d] = from_f<T>(acc[d]);
    }
  });
}

}  // namespace

std::vector<torch::Tensor> rms_norm(const torch::Tensor& x, const c10::optional<torch::Tensor>& add,
                                    const torch::Tensor& w, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && w.is_contiguous() && w.size(0) == x.size(1) &&
                  w.scalar_type() == x.scalar_type() && !x.is_cuda(),
              "dart kernels: rms_norm takes x (B, D) and its weight (D,) of one dtype on the CPU");
  if (add && add->defined())
    TORCH_CHECK(add->sizes() == x.sizes() && add->stride(1) == 1 && add->scalar_type() == x.scalar_type(),
                "dart kernels: the residual added before rms_norm must be like x");
  auto res = torch::empty_like(x, at::MemoryFormat::Contiguous);
  auto y = torch::empty_like(res);
  if (x.scalar_type() == at::kBFloat16)
    norm_impl<uint16_t>(x, add, w, eps, res, y);
  else if (x.scalar_type() == at::kFloat)
    norm_impl<float>(x, add, w, eps, res, y);
  else
    TORCH_CHECK(false, "dart kernels: bfloat16 or float32 only");
  return {res, y};
}

torch::Tensor attend(const torch::Tensor& qkv, torch::Tensor& kc, torch::Tensor& vc, int64_t pos,
                     const torch::Tensor& cos, const torch::Tensor& sin, int64_t H, int64_t Hkv, double scale) {
  TORCH_CHECK(qkv.dim() == 2 && qkv.stride(1) == 1 && kc.dim() == 4 && vc.sizes() == kc.sizes() &&
                  kc.stride(3) == 1 && vc.stride(3) == 1 && !qkv.is_cuda(),
              "dart kernels: attend takes qkv (B, (H + 2 Hkv) hd) and caches (B, Hkv, L, hd)");
  const int64_t hd = kc.size(3);
  TORCH_CHECK(qkv.size(1) == (H + 2 * Hkv) * hd && H % Hkv == 0 && hd % 2 == 0 && kc.size(0) == qkv.size(0) &&
                  kc.size(1) == Hkv && pos >= 0 && pos < kc.size(2) && cos.size(1) == hd && cos.stride(1) == 1 &&
                  sin.stride(1) == 1,
              "dart kernels: attend's shapes do not agree (or pos ", pos, " is outside the cache)");
  TORCH_CHECK(kc.scalar_type() == qkv.scalar_type() && cos.scalar_type() == qkv.scalar_type() &&
                  sin.scalar_type() == qkv.scalar_type(),
              "dart kernels: attend's tensors must share one dtype");
  auto o = torch::empty({qkv.size(0), H * hd}, qkv.options());
  if (qkv.scalar_type() == at::kBFloat16)
    attend_impl<uint16_t>(qkv, kc, vc, pos, cos, sin, H, Hkv, scale, o);
  else if (qkv.scalar_type() == at::kFloat)
    attend_impl<float>(qkv, kc, vc, pos, cos, sin, H, Hkv, scale, o);
  else
    TORCH_CHECK(false, "dart kernels: bfloat16 or float32 only");
  return o;
}

}  // namespace dk
