// Moving neurons in place (the engine's compaction: a kept set moved to a contiguous prefix): t[dst[i]] = t[src[i]]
// along rows (gate and up, one row per neuron) or along columns (a Linear down projection, one column per neuron),
// for any element size. Exact (it only moves bytes); torch's column gather is several times slower on a CPU.
#include "common.h"

namespace dk {
namespace {

template <typename E>
void move_cols(torch::Tensor& t, const int64_t* dst, const int64_t* src, int64_t n) {
  const int64_t R = t.size(0), ld = t.stride(0);
  E* base = static_cast<E*>(t.data_ptr());
  at::parallel_for(0, R, 16, [&](int64_t r0, int64_t r1) {
    std::vector<E> tmp(n);
    for (int64_t r = r0; r < r1; ++r) {
      E* row = base + r * ld;
      for (int64_t i = 0; i < n; ++i) tmp[i] = row[src[i]];
      if (dst == nullptr)
        std::memcpy(row, tmp.data(), n * sizeof(E));
      else
        for (int64_t i = 0; i < n; ++i) row[dst[i]] = tmp[i];
    }
  });
}

void move_rows(torch::Tensor& t, const int64_t* dst, const int64_t* src, int64_t n) {
  const int64_t bytes = t.size(1) * t.element_size(), ld = t.stride(0) * t.element_size();
  char* base = static_cast<char*>(t.data_ptr());
  static std::vector<char> tmp;  // kept between calls (grows only): a fresh buffer's page faults cost more than the
  if (static_cast<int64_t>(tmp.size()) < n * bytes) tmp.resize(n * bytes);  // copy (the engine compacts one at a time)
  at::parallel_for(0, n, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) std::memcpy(tmp.data() + i * bytes, base + src[i] * ld, bytes);
  });
  at::parallel_for(0, n, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) std::memcpy(base + (dst ? dst[i] : i) * ld, tmp.data() + i * bytes, bytes);
  });
}

}  // namespace

void move_(torch::Tensor& t, int64_t dim, const c10::optional<torch::Tensor>& dst, const torch::Tensor& src) {
  TORCH_CHECK(t.dim() == 2 && t.stride(1) == 1 && !t.is_cuda() && (dim == 0 || dim == 1),
              "dart kernels: move_ takes a 2-d CPU tensor with unit column stride and dim 0 or 1");
  TORCH_CHECK(src.scalar_type() == at::kLong && src.is_contiguous() && (!dst || (dst->scalar_type() == at::kLong &&
              dst->is_contiguous() && dst->numel() == src.numel())),
              "dart kernels: move_'s indices are contiguous int64, dst as many as src");
  const int64_t n = src.numel();
  TORCH_CHECK(dst || n == t.size(dim), "dart kernels: a permutation (no dst) lists every index of the dimension");
  const int64_t* s = src.data_ptr<int64_t>();
  const int64_t* d = dst ? dst->data_ptr<int64_t>() : nullptr;
  if (dim == 0) return move_rows(t, d, s, n);
  switch (t.element_size()) {
    case 2: return move_cols<uint16_t>(t, d, s, n);
    case 4: return move_cols<uint32_t>(t, d, s, n);
    case 8: return move_cols<uint64_t>(t, d, s, n);
    default: TORCH_CHECK(false, "dart kernels: move_ moves elements of 2, 4 or 8 bytes");
  }
}

}  // namespace dk
