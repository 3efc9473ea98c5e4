// Reward head: per-row cosine of L2-normalised latents, forward and backward
// (math: easytune/ops/reward_head.py). One warp per row; rows of 8 warps per 256-thread block.
#include "common.cuh"

namespace et {
namespace {

constexpr int kWarps = 8;

struct RowNorms {
  float norm_m, norm_t, clamped_m, clamped_t, cos;
};

// Sums over one row by the 32 lanes of a warp (every lane gets the totals).
template <class T, int V>
__device__ __forceinline__ RowNorms row_norms(const T* m, const T* t, int64_t dim, int lane, float eps) {
  float mm = 0.0f, tt = 0.0f, mt = 0.0f;
  for (int64_t d = static_cast<int64_t>(lane) * V; d < dim; d += 32 * V) {
    const Vec<T, V> vm = load_vec<V>(m + d), vt = load_vec<V>(t + d);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float a = to_float(vm.v[j]), b = to_float(vt.v[j]);
      mm += a * a, tt += b * b, mt += a * b;
    }
  }
  mm = warp_sum(mm), tt = warp_sum(tt), mt = warp_sum(mt);
  RowNorms r;
  r.norm_m = sqrtf(mm), r.norm_t = sqrtf(tt);
  r.clamped_m = fmaxf(r.norm_m, eps), r.clamped_t = fmaxf(r.norm_t, eps);
  r.cos = mt / (r.clamped_m * r.clamped_t);
  return r;
}

template <class T, int V>
__global__ void __launch_bounds__(256)
    reward_head_fwd_kernel(const T* motion, const T* text, T* out, int64_t rows, int64_t dim, float eps) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // the whole warp leaves together
  const RowNorms r = row_norms<T, V>(motion + row * dim, text + row * dim, dim, lane, eps);
  if (lane == 0) out[row] = from_float<T>(r.cos);
}

// d cos / d m = t / (|m|' |t|') - [|m| >= eps] cos m / |m|'^2   (|m|' = max(|m|, eps)); same for t.
template <class T, int V>
__global__ void __launch_bounds__(256)
    reward_head_bwd_kernel(const T* motion, const T* text, const T* grad_out, T* grad_motion, T* grad_text,
                           int64_t rows, int64_t dim, float eps) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const T* m = motion + row * dim;
  const T* t = text + row * dim;
  const RowNorms r = row_norms<T, V>(m, t, dim, lane, eps);
  const float g = to_float(grad_out[row]);
  const float cross = g / (r.clamped_m * r.clamped_t);
  const float self_m = r.norm_m >= eps ? g * r.cos / (r.clamped_m * r.clamped_m) : 0.0f;
  const float self_t = r.norm_t >= eps ? g * r.cos / (r.clamped_t * r.clamped_t) : 0.0f;
  for (int64_t d = static_cast<int64_t>(lane) * V; d < dim; d += 32 * V) {
    const Vec<T, V> vm = load_vec<V>(m + d), vt = load_vec<V>(t + d);
    Vec<T, V> dm, dt;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float a = to_float(vm.v[j]), b = to_float(vt.v[j]);
      dm.v[j] = from_float<T>(cross * b - self_m * a);
      dt.v[j] = from_float<T>(cross * a - self_t * b);
    }
    if (grad_motion) store_vec<V>(grad_motion + row * dim + d, dm);
    if (grad_text) store_vec<V>(grad_text + row * dim + d, dt);
  }
}

int check_args(const char* op, int dtype, int64_t rows, int64_t dim, float eps) {
  if (int rc = check_dtype(op, dtype)) return rc;
  if (rows < 0 || dim < 0)
    return set_error(EASYTUNE_CUDA_ERR_INVALID, "%s: rows (%lld) and dim (%lld) must be >= 0", op,
                     static_cast<long long>(rows), static_cast<long long>(dim));
  if (!(eps > 0.0f)) return set_error(EASYTUNE_CUDA_ERR_INVALID, "%s: eps must be > 0, got %g", op, eps);
  return EASYTUNE_CUDA_OK;
}

// 16-byte accesses when V divides dim and the row starts stay aligned.
template <class T>
bool vectorisable(int64_t dim, const void* const* pointers, int n) {
  constexpr int V = 16 / sizeof(T);
  bool ok = dim % V == 0;
  for (int i = 0; i < n; ++i) ok = ok && (pointers[i] == nullptr || is_aligned(pointers[i], 16));
  return ok;
}

template <class T>
int fwd_typed(const void* motion, const void* text, void* out, int64_t rows, int64_t dim, float eps,
              void* stream) {
  constexpr int V = 16 / sizeof(T);
  const void* ptrs[] = {motion, text};
  auto* kernel = vectorisable<T>(dim, ptrs, 2) ? &reward_head_fwd_kernel<T, V> : &reward_head_fwd_kernel<T, 1>;
  const unsigned grid = static_cast<unsigned>((rows + kWarps - 1) / kWarps);
  ET_LAUNCH(kernel, grid, 32 * kWarps, stream, static_cast<const T*>(motion), static_cast<const T*>(text),
            static_cast<T*>(out), rows, dim, eps);
  return check_launch("easytune_reward_head_fwd");
}

template <class T>
int bwd_typed(const void* motion, const void* text, const void* grad_out, void* grad_motion, void* grad_text,
              int64_t rows, int64_t dim, float eps, void* stream) {
  constexpr int V = 16 / sizeof(T);
  const void* ptrs[] = {motion, text, grad_motion, grad_text};
  auto* kernel = vectorisable<T>(dim, ptrs, 4) ? &reward_head_bwd_kernel<T, V> : &reward_head_bwd_kernel<T, 1>;
  const unsigned grid = static_cast<unsigned>((rows + kWarps - 1) / kWarps);
  ET_LAUNCH(kernel, grid, 32 * kWarps, stream, static_cast<const T*>(motion), static_cast<const T*>(text),
            static_cast<const T*>(grad_out), static_cast<T*>(grad_motion), static_cast<T*>(grad_text), rows, dim,
            eps);
  return check_launch("easytune_reward_head_bwd");
}

}  // namespace
}  // namespace et

extern "C" EASYTUNE_API int easytune_reward_head_fwd(const void* motion, const void* text, void* out, int64_t rows,
                                                     int64_t dim, int dtype, float eps, void* stream) {
  using namespace et;
  static const char* op = "easytune_reward_head_fwd";
  clear_error();
  if (int rc = check_args(op, dtype, rows, dim, eps)) return rc;
  if (rows == 0) return EASYTUNE_CUDA_OK;
  if (!out || (dim > 0 && (!motion || !text)))
    return set_error(EASYTUNE_CUDA_ERR_INVALID, "%s: motion, text and out must be non-null", op);
  if ((rows + kWarps - 1) / kWarps > 0x7fffffff)
    return set_error(EASYTUNE_CUDA_ERR_UNSUPPORTED, "%s: %lld rows exceed the grid limit", op,
                     static_cast<long long>(rows));
  switch (dtype) {
    case EASYTUNE_FLOAT32: return fwd_typed<float>(motion, text, out, rows, dim, eps, stream);
    case EASYTUNE_FLOAT16: return fwd_typed<__half>(motion, text, out, rows, dim, eps, stream);
    default: return fwd_typed<__nv_bfloat16>(motion, text, out, rows, dim, eps, stream);
  }
}

extern "C" EASYTUNE_API int easytune_reward_head_bwd(const void* motion, const void* text, const void* grad_out,
                                                     void* grad_motion, void* grad_text, int64_t rows, int64_t dim,
                                                     int dtype, float eps, void* stream) {
  using namespace et;
  static const char* op = "easytune_reward_head_bwd";
  clear_error();
  if (int rc = check_args(op, dtype, rows, dim, eps)) return rc;
  if (rows == 0 || dim == 0 || (!grad_motion && !grad_text)) return EASYTUNE_CUDA_OK;
  if (!motion || !text || !grad_out)
    return set_error(EASYTUNE_CUDA_ERR_INVALID, "%s: motion, text and grad_out must be non-null", op);
  if ((rows + kWarps - 1) / kWarps > 0x7fffffff)
    return set_error(EASYTUNE_CUDA_ERR_UNSUPPORTED, "%s: %lld rows exceed the grid limit", op,
                     static_cast<long long>(rows));
  switch (dtype) {
    case EASYTUNE_FLOAT32: return bwd_typed<float>(motion, text, grad_out, grad_motion, grad_text, rows, dim, eps,
                                                   stream);
    case EASYTUNE_FLOAT16: return bwd_typed<__half>(motion, text, grad_out, grad_motion, grad_text, rows, dim, eps,
                                                    stream);
    default: return bwd_typed<__nv_bfloat16>(motion, text, grad_out, grad_motion, grad_text, rows, dim, eps,
                                             stream);
  }
}
