/* easytune CUDA kernels: plain C ABI of libeasytune_cuda.so (loaded from Python with ctypes).
 *
 * Conventions shared by every entry point:
 *   - tensors are raw device pointers; element type given by an EasytuneDtype code; math is fp32;
 *   - `stream` is a cudaStream_t passed as void* (NULL = the legacy default stream);
 *   - the return value is EASYTUNE_CUDA_OK or an error code; easytune_cuda_last_error() then returns
 *     a message (per host thread) that names the entry point and, for CUDA failures, the CUDA error;
 *   - launches are asynchronous: a kernel fault surfaces at the next synchronising CUDA call.
 * ABI changes bump EASYTUNE_CUDA_ABI_VERSION; the Python loader refuses a library of another version.
 */
#ifndef EASYTUNE_CUDA_H
#define EASYTUNE_CUDA_H

#include <stdint.h>

#define EASYTUNE_CUDA_ABI_VERSION 2

#if defined(_WIN32)
#define EASYTUNE_API __declspec(dllexport)
#else
#define EASYTUNE_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

enum EasytuneStatus {
  EASYTUNE_CUDA_OK = 0,
  EASYTUNE_CUDA_ERR_INVALID = 1,     /* bad argument: null pointer, negative size, unknown code */
  EASYTUNE_CUDA_ERR_UNSUPPORTED = 2, /* valid but not compiled in: head dim, size beyond limits */
  EASYTUNE_CUDA_ERR_CUDA = 3         /* the CUDA runtime failed: no device/driver, no kernel image, launch */
};

enum EasytuneDtype { EASYTUNE_FLOAT32 = 0, EASYTUNE_FLOAT16 = 1, EASYTUNE_BFLOAT16 = 2 };

// 3, 4: flow matching (x_t = (1 - sigma) x0 + sigma eps), velocity and x0 outputs; alpha_t / alpha_prev
// then carry sigma_t / sigma_next and eta must be 0.
enum EasytunePrediction {
  EASYTUNE_EPSILON = 0,
  EASYTUNE_SAMPLE = 1,
  EASYTUNE_V_PREDICTION = 2,
  EASYTUNE_FLOW_PREDICTION = 3,
  EASYTUNE_FLOW_SAMPLE = 4
};

/* ---- library information ---- */
EASYTUNE_API int easytune_cuda_abi_version(void);
/* CUDA toolkit the library was compiled with, as CUDART_VERSION (13000 = 13.0); 0 in the CPU emulator. */
EASYTUNE_API int easytune_cuda_version(void);
/* Comma-separated code the library carries: "sm_80" (SASS) and "compute_80" (PTX, JIT-compiled on newer GPUs). */
EASYTUNE_API const char* easytune_cuda_archs(void);
/* Message of the last failed call on this host thread ("" if none). */
EASYTUNE_API const char* easytune_cuda_last_error(void);
/* Number of CUDA devices the runtime sees; fails (ERR_CUDA) without a driver or device. */
EASYTUNE_API int easytune_cuda_device_count(int* count);
/* Checks that the library has a kernel image for the current device (OK) or says why not (ERR_CUDA). */
EASYTUNE_API int easytune_cuda_probe(void);

/* ---- fused classifier-free guidance + DDIM step (easytune/ops/guided_step.py) ----
 * cond, uncond (NULL = no guidance: guided = cond), sample, noise (NULL: no noise term) and the three
 * outputs hold batch * per_sample elements, contiguous, one dtype; alpha_t / alpha_prev: float32 [batch].
 *   guided = uncond + w (cond - uncond);  x0, eps from (guided, sample) for the prediction type;
 *   std = eta sqrt((1 - a_prev) / (1 - a_t) (1 - a_t / a_prev));
 *   prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps + std noise.                          */
EASYTUNE_API int easytune_guided_step_fwd(const void* cond, const void* uncond, const void* sample,
                                          const void* noise, const float* alpha_t, const float* alpha_prev,
                                          void* guided, void* x0, void* prev, int64_t batch, int64_t per_sample,
                                          int dtype, int prediction, float guidance_scale, float eta,
                                          void* stream);
/* Vector-Jacobian product of the forward. Upstream gradients (grad_guided, grad_x0, grad_prev) may be
 * NULL (= zero); outputs may be NULL (= not needed). has_uncond says whether the forward had uncond
 * (then grad_cond = w dG and grad_uncond = (1 - w) dG, else grad_cond = dG). grad_noise = std grad_prev. */
EASYTUNE_API int easytune_guided_step_bwd(const void* grad_guided, const void* grad_x0, const void* grad_prev,
                                          const float* alpha_t, const float* alpha_prev, void* grad_cond,
                                          void* grad_uncond, void* grad_sample, void* grad_noise, int has_uncond,
                                          int64_t batch, int64_t per_sample, int dtype, int prediction,
                                          float guidance_scale, float eta, void* stream);

/* ---- reward head: cos_b = <m_b, t_b> / (max(|m_b|, eps) max(|t_b|, eps)) (easytune/ops/reward_head.py) ----
 * motion, text: [rows, dim] contiguous; out, grad_out: [rows]; all one dtype. grad outputs may be NULL. */
EASYTUNE_API int easytune_reward_head_fwd(const void* motion, const void* text, void* out, int64_t rows,
                                          int64_t dim, int dtype, float eps, void* stream);
EASYTUNE_API int easytune_reward_head_bwd(const void* motion, const void* text, const void* grad_out,
                                          void* grad_motion, void* grad_text, int64_t rows, int64_t dim,
                                          int dtype, float eps, void* stream);

/* ---- masked attention forward (easytune/ops/attention.py) ----
 * q: [batch, heads, tq, head_dim], k, v: [batch, heads, tk, head_dim], element strides {batch, head, seq}
 * given in *_strides (last dim contiguous); out: contiguous [batch, heads, tq, head_dim]. q_lengths /
 * kv_lengths: int64 [batch] on the device (NULL = all valid); key j of sample b is valid iff j <
 * kv_lengths[b], query row i iff i < q_lengths[b]. Padded query rows and rows without a valid key are
 * zero. head_dim: 32, 64 or 128. fp16/bf16 use tensor cores (sm_80 mma.sync); fp32 runs on CUDA cores. */
EASYTUNE_API int easytune_attention_fwd(const void* q, const void* k, const void* v, void* out,
                                        const int64_t* q_lengths, const int64_t* kv_lengths, int64_t batch,
                                        int64_t heads, int64_t tq, int64_t tk, int64_t head_dim,
                                        const int64_t* q_strides, const int64_t* k_strides,
                                        const int64_t* v_strides, int dtype, float scale, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* EASYTUNE_CUDA_H */
