// Fused classifier-free guidance + DDIM or flow Euler step, forward and backward (math:
// easytune/ops/guided_step.py; for the flow codes alpha_t / alpha_prev carry sigma_t / sigma_next).
//
// Per sample b the step is linear in the guided output g and the sample x:
//   x0 = x0_g g + x0_x x,  eps = eps_g g + eps_x x,  prev = prev_g g + prev_x x + std noise,
// so one elementwise pass computes all outputs and the backward is the transposed combination.
#include "common.cuh"

namespace et {
namespace {

struct StepCoef {
  float x0_g, x0_x, prev_g, prev_x, std;
};

__device__ __forceinline__ StepCoef step_coef(float a, float a_prev, int prediction, float eta) {
  if (prediction == EASYTUNE_FLOW_PREDICTION)  // a = sigma, a_prev = sigma_next: prev = x + (s' - s) v
    return {-a, 1.0f, a_prev - a, 1.0f, 0.0f};
  if (prediction == EASYTUNE_FLOW_SAMPLE)  // x0 = g, eps = (x - (1-s) g) / s, prev = (1-s') x0 + s' eps
    return {1.0f, 0.0f, (1.0f - a_prev) - a_prev * (1.0f - a) / a, a_prev / a, 0.0f};
  const float sa = sqrtf(a), sb = sqrtf(1.0f - a);
  float x0_g, x0_x, eps_g, eps_x;
  if (prediction == EASYTUNE_EPSILON) {  // eps = g, x0 = (x - sqrt(1-a) g) / sqrt(a)
    x0_g = -sb / sa, x0_x = 1.0f / sa, eps_g = 1.0f, eps_x = 0.0f;
  } else if (prediction == EASYTUNE_SAMPLE) {  // x0 = g, eps = (x - sqrt(a) g) / sqrt(1-a)
    x0_g = 1.0f, x0_x = 0.0f, eps_g = -sa / sb, eps_x = 1.0f / sb;
  } else {  // v: x0 = sqrt(a) x - sqrt(1-a) v, eps = sqrt(a) v + sqrt(1-a) x
    x0_g = -sb, x0_x = sa, eps_g = sa, eps_x = sb;
  }
  const float variance = (1.0f - a_prev) / (1.0f - a) * (1.0f - a / a_prev);
  const float std = eta * sqrtf(variance);
  const float direction = sqrtf(1.0f - a_prev - std * std);
  const float sap = sqrtf(a_prev);
  return {x0_g, x0_x, sap * x0_g + direction * eps_g, sap * x0_x + direction * eps_x, std};
}

struct FwdArgs {
  const void* cond;
  const void* uncond;
  const void* sample;
  const void* noise;
  const float* alpha_t;
  const float* alpha_prev;
  void* guided;
  void* x0;
  void* prev;
  int64_t n_vec, per_sample_vec;  // counts of V-element groups (V divides per_sample)
  int prediction;
  float w, eta;
};

template <class T, int V>
__global__ void __launch_bounds__(256) guided_step_fwd_kernel(FwdArgs p) {
  const T* cond = static_cast<const T*>(p.cond);
  const T* uncond = static_cast<const T*>(p.uncond);
  const T* sample = static_cast<const T*>(p.sample);
  const T* noise = static_cast<const T*>(p.noise);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.n_vec;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / p.per_sample_vec;
    const StepCoef c = step_coef(p.alpha_t[b], p.alpha_prev[b], p.prediction, p.eta);
    const Vec<T, V> vc = load_vec<V>(cond + i * V);
    const Vec<T, V> vx = load_vec<V>(sample + i * V);
    Vec<T, V> vu = vc, vn = vc;
    if (uncond) vu = load_vec<V>(uncond + i * V);
    if (noise) vn = load_vec<V>(noise + i * V);
    Vec<T, V> og, ox0, oprev;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float x = to_float(vx.v[j]);
      const float g = uncond ? to_float(vu.v[j]) + p.w * (to_float(vc.v[j]) - to_float(vu.v[j])) : to_float(vc.v[j]);
      float prev = c.prev_g * g + c.prev_x * x;
      if (noise) prev += c.std * to_float(vn.v[j]);
      og.v[j] = from_float<T>(g);
      ox0.v[j] = from_float<T>(c.x0_g * g + c.x0_x * x);
      oprev.v[j] = from_float<T>(prev);
    }
    store_vec<V>(static_cast<T*>(p.guided) + i * V, og);
    store_vec<V>(static_cast<T*>(p.x0) + i * V, ox0);
    store_vec<V>(static_cast<T*>(p.prev) + i * V, oprev);
  }
}

struct BwdArgs {
  const void* grad_guided;
  const void* grad_x0;
  const void* grad_prev;
  const float* alpha_t;
  const float* alpha_prev;
  void* grad_cond;
  void* grad_uncond;
  void* grad_sample;
  void* grad_noise;
  int has_uncond;
  int64_t n_vec, per_sample_vec;
  int prediction;
  float w, eta;
};

template <class T, int V>
__global__ void __launch_bounds__(256) guided_step_bwd_kernel(BwdArgs p) {
  const T* gg = static_cast<const T*>(p.grad_guided);
  const T* gx0 = static_cast<const T*>(p.grad_x0);
  const T* gprev = static_cast<const T*>(p.grad_prev);
  const float w_cond = p.has_uncond ? p.w : 1.0f, w_uncond = 1.0f - p.w;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.n_vec;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / p.per_sample_vec;
    const StepCoef c = step_coef(p.alpha_t[b], p.alpha_prev[b], p.prediction, p.eta);
    Vec<T, V> vg{}, vx0{}, vp{};
    if (gg) vg = load_vec<V>(gg + i * V);
    if (gx0) vx0 = load_vec<V>(gx0 + i * V);
    if (gprev) vp = load_vec<V>(gprev + i * V);
    Vec<T, V> dcond, duncond, dsample, dnoise;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float d_g = gg ? to_float(vg.v[j]) : 0.0f;
      const float d_x0 = gx0 ? to_float(vx0.v[j]) : 0.0f;
      const float d_prev = gprev ? to_float(vp.v[j]) : 0.0f;
      const float d_guided = d_g + c.x0_g * d_x0 + c.prev_g * d_prev;  // total gradient of g
      dcond.v[j] = from_float<T>(w_cond * d_guided);
      duncond.v[j] = from_float<T>(w_uncond * d_guided);
      dsample.v[j] = from_float<T>(c.x0_x * d_x0 + c.prev_x * d_prev);
      dnoise.v[j] = from_float<T>(c.std * d_prev);
    }
    if (p.grad_cond) store_vec<V>(static_cast<T*>(p.grad_cond) + i * V, dcond);
    if (p.grad_uncond) store_vec<V>(static_cast<T*>(p.grad_uncond) + i * V, duncond);
    if (p.grad_sample) store_vec<V>(static_cast<T*>(p.grad_sample) + i * V, dsample);
    if (p.grad_noise) store_vec<V>(static_cast<T*>(p.grad_noise) + i * V, dnoise);
  }
}

// Vectorised (16-byte) path when every pointer is 16-byte aligned and V divides per_sample.
template <class T, class Args>
int launch_elementwise(void (*vec_kernel)(Args), void (*scalar_kernel)(Args), Args args,
                       const void* const* pointers, int n_pointers, int64_t total, int64_t per_sample,
                       void* stream, const char* op) {
  constexpr int V = 16 / sizeof(T);
  bool vec = per_sample % V == 0;
  for (int i = 0; i < n_pointers; ++i) vec = vec && (pointers[i] == nullptr || is_aligned(pointers[i], 16));
  const int64_t width = vec ? V : 1;
  args.n_vec = total / width;
  args.per_sample_vec = per_sample / width;
  const unsigned grid = grid_for(args.n_vec, 256);
  auto* kernel = vec ? vec_kernel : scalar_kernel;
  ET_LAUNCH(kernel, grid, 256, stream, args);
  return check_launch(op);
}

int check_sizes(const char* op, int64_t batch, int64_t per_sample, int prediction) {
  if (batch < 0 || per_sample < 0)
    return set_error(EASYTUNE_CUDA_ERR_INVALID, "%s: batch (%lld) and per_sample (%lld) must be >= 0", op,
                     static_cast<long long>(batch), static_cast<long long>(per_sample));
  if (prediction < EASYTUNE_EPSILON || prediction > EASYTUNE_FLOW_SAMPLE)
    return set_error(EASYTUNE_CUDA_ERR_INVALID, "%s: prediction code %d is not 0 (epsilon), 1 (sample), "
                     "2 (v_prediction), 3 (flow_prediction) or 4 (flow_sample)", op, prediction);
  return EASYTUNE_CUDA_OK;
}

template <class T>
int fwd_typed(FwdArgs a, int64_t total, int64_t per_sample, void* stream) {
  constexpr int V = 16 / sizeof(T);
  const void* ptrs[] = {a.cond, a.uncond, a.sample, a.noise, a.guided, a.x0, a.prev};
  return launch_elementwise<T>(&guided_step_fwd_kernel<T, V>, &guided_step_fwd_kernel<T, 1>, a, ptrs, 7, total,
                               per_sample, stream, "easytune_guided_step_fwd");
}

template <class T>
int bwd_typed(BwdArgs a, int64_t total, int64_t per_sample, void* stream) {
  constexpr int V = 16 / sizeof(T);
  const void* ptrs[] = {a.grad_guided, a.grad_x0, a.grad_prev, a.grad_cond, a.grad_uncond, a.grad_sample,
                        a.grad_noise};
  return launch_elementwise<T>(&guided_step_bwd_kernel<T, V>, &guided_step_bwd_kernel<T, 1>, a, ptrs, 7, total,
                               per_sample, stream, "easytune_guided_step_bwd");
}

}  // namespace
}  // namespace et

extern "C" EASYTUNE_API int easytune_guided_step_fwd(const void* cond, const void* uncond, const void* sample,
                                                     const void* noise, const float* alpha_t,
                                                     const float* alpha_prev, void* guided, void* x0, void* prev,
                                                     int64_t batch, int64_t per_sample, int dtype, int prediction,
                                                     float guidance_scale, float eta, void* stream) {
  using namespace et;
  static const char* op = "easytune_guided_step_fwd";
  clear_error();
  if (int rc = check_dtype(op, dtype)) return rc;
  if (int rc = check_sizes(op, batch, per_sample, prediction)) return rc;
  const int64_t total = batch * per_sample;
  if (total == 0) return EASYTUNE_CUDA_OK;
  if (!cond || !sample || !alpha_t || !alpha_prev || !guided || !x0 || !prev)
    return set_error(EASYTUNE_CUDA_ERR_INVALID, "%s: cond, sample, alpha_t, alpha_prev, guided, x0 and prev must "
                     "be non-null", op);
  const FwdArgs a{cond, uncond, sample, noise, alpha_t, alpha_prev, guided, x0, prev, 0, 0,
                  prediction, guidance_scale, eta};
  switch (dtype) {
    case EASYTUNE_FLOAT32: return fwd_typed<float>(a, total, per_sample, stream);
    case EASYTUNE_FLOAT16: return fwd_typed<__half>(a, total, per_sample, stream);
    default: return fwd_typed<__nv_bfloat16>(a, total, per_sample, stream);
  }
}

extern "C" EASYTUNE_API int easytune_guided_step_bwd(const void* grad_guided, const void* grad_x0,
                                                     const void* grad_prev, const float* alpha_t,
                                                     const float* alpha_prev, void* grad_cond, void* grad_uncond,
                                                     void* grad_sample, void* grad_noise, int has_uncond,
                                                     int64_t batch, int64_t per_sample, int dtype, int prediction,
                                                     float guidance_scale, float eta, void* stream) {
  using namespace et;
  static const char* op = "easytune_guided_step_bwd";
  clear_error();
  if (int rc = check_dtype(op, dtype)) return rc;
  if (int rc = check_sizes(op, batch, per_sample, prediction)) return rc;
  const int64_t total = batch * per_sample;
  if (total == 0) return EASYTUNE_CUDA_OK;
  if (!alpha_t || !alpha_prev)
    return set_error(EASYTUNE_CUDA_ERR_INVALID, "%s: alpha_t and alpha_prev must be non-null", op);
  if (grad_uncond && !has_uncond)
    return set_error(EASYTUNE_CUDA_ERR_INVALID, "%s: grad_uncond requested but has_uncond is 0", op);
  const BwdArgs a{grad_guided, grad_x0, grad_prev, alpha_t, alpha_prev, grad_cond, grad_uncond, grad_sample,
                  grad_noise, has_uncond, 0, 0, prediction, guidance_scale, eta};
  switch (dtype) {
    case EASYTUNE_FLOAT32: return bwd_typed<float>(a, total, per_sample, stream);
    case EASYTUNE_FLOAT16: return bwd_typed<__half>(a, total, per_sample, stream);
    default: return bwd_typed<__nv_bfloat16>(a, total, per_sample, stream);
  }
}
