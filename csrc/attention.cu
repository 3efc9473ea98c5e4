// C entry point of the masked attention forward: argument checks, then the per-dtype launcher.
#include <cmath>

#include "attention.cuh"

extern "C" EASYTUNE_API int easytune_attention_fwd(const void* q, const void* k, const void* v, void* out,
                                                   const int64_t* q_lengths, const int64_t* kv_lengths,
                                                   int64_t batch, int64_t heads, int64_t tq, int64_t tk,
                                                   int64_t head_dim, const int64_t* q_strides,
                                                   const int64_t* k_strides, const int64_t* v_strides, int dtype,
                                                   float scale, void* stream) {
  using namespace et;
  static const char* op = "easytune_attention_fwd";
  constexpr int64_t kIntMax = 0x7fffffff;
  clear_error();
  if (int rc = check_dtype(op, dtype)) return rc;
  if (batch < 0 || heads < 0 || tq < 0 || tk < 0)
    return set_error(EASYTUNE_CUDA_ERR_INVALID, "%s: batch, heads, tq and tk must be >= 0 (got %lld, %lld, %lld, "
                     "%lld)", op, static_cast<long long>(batch), static_cast<long long>(heads),
                     static_cast<long long>(tq), static_cast<long long>(tk));
  if (head_dim != 32 && head_dim != 64 && head_dim != 128)
    return set_error(EASYTUNE_CUDA_ERR_UNSUPPORTED, "%s: head_dim %lld is not compiled (32, 64 or 128)", op,
                     static_cast<long long>(head_dim));
  if (batch == 0 || heads == 0 || tq == 0) return EASYTUNE_CUDA_OK;
  const int64_t rows_per_block = dtype == EASYTUNE_FLOAT32 ? et::attn::kSimtRows : et::attn::kMmaRows;
  if (batch > kIntMax / heads || tq > kIntMax || tk > kIntMax || (tq + rows_per_block - 1) / rows_per_block > 65535)
    return set_error(EASYTUNE_CUDA_ERR_UNSUPPORTED, "%s: batch*heads (%lld) or sequence lengths (%lld, %lld) exceed "
                     "the launch limits", op, static_cast<long long>(batch * heads), static_cast<long long>(tq),
                     static_cast<long long>(tk));
  if (!q || !out || !q_strides || !k_strides || !v_strides || (tk > 0 && (!k || !v)))
    return set_error(EASYTUNE_CUDA_ERR_INVALID, "%s: q, k, v, out and the stride arrays must be non-null", op);
  if (!std::isfinite(scale)) return set_error(EASYTUNE_CUDA_ERR_INVALID, "%s: scale must be finite, got %g", op, scale);

  const int64_t vec = dtype == EASYTUNE_FLOAT32 ? 4 : 8;  // elements per 16 bytes
  bool kv_vec = is_aligned(k, 16) && is_aligned(v, 16);
  for (int i = 0; i < 3; ++i) kv_vec = kv_vec && k_strides[i] % vec == 0 && v_strides[i] % vec == 0;
  const AttnArgs args{q, k, v, out, q_lengths, kv_lengths, static_cast<int>(heads), static_cast<int>(tq),
                      static_cast<int>(tk), q_strides[0], q_strides[1], q_strides[2], k_strides[0], k_strides[1],
                      k_strides[2], v_strides[0], v_strides[1], v_strides[2],
                      static_cast<float>(scale * 1.4426950408889634), kv_vec ? 1 : 0};
  const int batch_heads = static_cast<int>(batch * heads), d = static_cast<int>(head_dim);
  switch (dtype) {
    case EASYTUNE_FLOAT32: return attention_launch_f32(args, batch_heads, d, stream);
    case EASYTUNE_FLOAT16: return attention_launch_f16(args, batch_heads, d, stream);
    default: return attention_launch_bf16(args, batch_heads, d, stream);
  }
}
