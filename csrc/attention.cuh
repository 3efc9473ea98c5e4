// Masked attention forward kernels (semantics: easytune/ops/attention.py), flash-style: K/V tiles in
// shared memory, online softmax in base 2 (scores pre-multiplied by scale * log2 e), fp32 statistics.
//   - attention_mma_kernel: fp16/bf16, tensor cores through mma.sync.m16n8k16 (sm_80+); 4 warps x
//     16 query rows; the score accumulators are reused in registers as the A operand of P V.
//   - attention_simt_kernel: fp32 (exact fp32 math on CUDA cores); 4 threads per query row.
// Keys at or beyond kv_len and query rows at or beyond q_len are never read (zeros stand in for them);
// the rows of padded queries, and every row when kv_len == 0, are written as exact zeros.
// Included by the per-dtype translation units attention_{f16,bf16,f32}.cu (parallel compilation).
#pragma once

#include <cmath>

#include "common.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "easytune attention kernels need sm_80 or newer (mma.sync with bf16); set EASYTUNE_CUDA_ARCHS"
#endif

namespace et {

struct AttnArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  const int64_t* q_lengths;
  const int64_t* kv_lengths;
  int heads, tq, tk;
  int64_t q_sb, q_sh, q_st, k_sb, k_sh, k_st, v_sb, v_sh, v_st;  // element strides: batch, head, seq
  float scale_log2;                                               // scale * log2(e)
  int kv_vec;                                                     // K/V rows allow 16-byte accesses
};

// Per-dtype launchers (attention_{f32,f16,bf16}.cu); head_dim is 32, 64 or 128.
int attention_launch_f32(const AttnArgs& args, int batch_heads, int head_dim, void* stream);
int attention_launch_f16(const AttnArgs& args, int batch_heads, int head_dim, void* stream);
int attention_launch_bf16(const AttnArgs& args, int batch_heads, int head_dim, void* stream);

namespace attn {

__device__ __forceinline__ int valid_length(const int64_t* lengths, int b, int size) {
  if (!lengths) return size;
  const int64_t n = lengths[b];  // validated by the caller; clamped here only to stay in bounds
  return n < 0 ? 0 : (n > size ? size : static_cast<int>(n));
}

// rows [n0, n0 + BN) of a K or V head into tile[BN][LD]; rows at or beyond n_valid become zeros.
template <class T, int BN, int D, int LD, int THREADS>
__device__ __forceinline__ void load_tile(T (*tile)[LD], const T* base, int64_t row_stride, int n0, int n_valid,
                                          bool vec) {
  constexpr int V = 16 / sizeof(T);
  static_assert(D % V == 0 && (LD * sizeof(T)) % 16 == 0, "tile rows must allow 16-byte accesses");
  if (vec) {
    constexpr int PER_ROW = D / V;
    for (int idx = threadIdx.x; idx < BN * PER_ROW; idx += THREADS) {
      const int r = idx / PER_ROW, c = (idx % PER_ROW) * V;
      Vec<T, V> value{};
      if (n0 + r < n_valid) value = load_vec<V>(base + static_cast<int64_t>(n0 + r) * row_stride + c);
      store_vec<V>(&tile[r][c], value);
    }
  } else {
    for (int idx = threadIdx.x; idx < BN * D; idx += THREADS) {
      const int r = idx / D, c = idx % D;
      tile[r][c] = n0 + r < n_valid ? base[static_cast<int64_t>(n0 + r) * row_stride + c] : from_float<T>(0.0f);
    }
  }
}

// Zeros rows [m0, min(m0 + rows, tq)) of one (batch, head) output.
template <class T, int D, int THREADS>
__device__ __forceinline__ void zero_rows(T* out, int m0, int rows, int tq) {
  const int n = (tq - m0 < rows ? tq - m0 : rows) * D;
  for (int idx = threadIdx.x; idx < n; idx += THREADS) out[static_cast<int64_t>(m0) * D + idx] = from_float<T>(0.0f);
}

constexpr int kMmaRows = 64, kMmaKeys = 64, kMmaThreads = 128;

template <class T, int D>
__global__ void __launch_bounds__(kMmaThreads) attention_mma_kernel(AttnArgs p) {
  constexpr int LD = D + 8;  // padding: conflict-free fragment reads
  __shared__ __align__(16) T ks[kMmaKeys][LD];
  __shared__ __align__(16) T vs[kMmaKeys][LD];
  const int bh = blockIdx.x, b = bh / p.heads, h = bh % p.heads;
  const int m0 = blockIdx.y * kMmaRows;
  const int q_len = valid_length(p.q_lengths, b, p.tq), kv_len = valid_length(p.kv_lengths, b, p.tk);
  T* out = static_cast<T*>(p.out) + static_cast<int64_t>(bh) * p.tq * D;
  if (m0 >= q_len || kv_len == 0) {  // block-uniform: every row of this tile is zero
    zero_rows<T, D, kMmaThreads>(out, m0, kMmaRows, p.tq);
    return;
  }
  const T* q = static_cast<const T*>(p.q) + b * p.q_sb + h * p.q_sh;
  const T* k = static_cast<const T*>(p.k) + b * p.k_sb + h * p.k_sh;
  const T* v = static_cast<const T*>(p.v) + b * p.v_sb + h * p.v_sh;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane >> 2, tig = lane & 3;
  const int row0 = m0 + warp * 16 + group, row1 = row0 + 8;  // the two query rows of this thread
  const bool in0 = row0 < q_len, in1 = row1 < q_len;

  // Q as A fragments (16 x D, row-major): {(r0,c),(r0,c+1)} {(r1,c),(r1,c+1)} {(r0,c+8),..} {(r1,c+8),..}.
  const T zero = from_float<T>(0.0f);
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const int c = kk * 16 + 2 * tig;
    const T* q0 = q + static_cast<int64_t>(row0) * p.q_st;
    const T* q1 = q + static_cast<int64_t>(row1) * p.q_st;
    qf[kk][0] = pack_pair<T>(in0 ? q0[c] : zero, in0 ? q0[c + 1] : zero);
    qf[kk][1] = pack_pair<T>(in1 ? q1[c] : zero, in1 ? q1[c + 1] : zero);
    qf[kk][2] = pack_pair<T>(in0 ? q0[c + 8] : zero, in0 ? q0[c + 9] : zero);
    qf[kk][3] = pack_pair<T>(in1 ? q1[c + 8] : zero, in1 ? q1[c + 9] : zero);
  }

  float o[D / 8][4];  // output accumulators: D/8 tiles of 16 x 8 (c0,c1: row0; c2,c3: row1)
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};

  for (int n0 = 0; n0 < kv_len; n0 += kMmaKeys) {
    __syncthreads();  // the previous tile is no longer read
    load_tile<T, kMmaKeys, D, LD, kMmaThreads>(ks, k, p.k_st, n0, kv_len, p.kv_vec);
    load_tile<T, kMmaKeys, D, LD, kMmaThreads>(vs, v, p.v_st, n0, kv_len, p.kv_vec);
    __syncthreads();

    // S = Q K^T: B operand (16 x 8, "col") element (k, n) = K[key n][dim k].
    float s[kMmaKeys / 8][4];
#pragma unroll
    for (int j = 0; j < kMmaKeys / 8; ++j) {
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const T* kr = &ks[8 * j + group][kk * 16 + 2 * tig];
        const uint32_t bf[2] = {load_pair(kr), load_pair(kr + 8)};
        mma_16816<T>(s[j], qf[kk], bf);
      }
    }

    // Mask, scale, online softmax (a row's statistics live in the 4 lanes of its group).
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < kMmaKeys / 8; ++j) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int key = n0 + 8 * j + 2 * tig + (i & 1);
        s[j][i] = key < kv_len ? s[j][i] * p.scale_log2 : -INFINITY;
        tile_max[i >> 1] = fmaxf(tile_max[i >> 1], s[j][i]);
      }
    }
    float base[2], correction[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
      const float new_max = fmaxf(row_max[r], tile_max[r]);
      base[r] = new_max == -INFINITY ? 0.0f : new_max;
      correction[r] = exp2f(row_max[r] - base[r]);
      row_max[r] = new_max;
      row_sum[r] *= correction[r];
    }
#pragma unroll
    for (int j = 0; j < kMmaKeys / 8; ++j) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        s[j][i] = exp2f(s[j][i] - base[i >> 1]);
        row_sum[i >> 1] += s[j][i];
      }
    }
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) o[dt][i] *= correction[i >> 1];
    }

    // O += P V: P's A fragments are the score accumulators of key tiles 2kk and 2kk+1;
    // B element (k, n) = V[key k][dim n].
#pragma unroll
    for (int kk = 0; kk < kMmaKeys / 16; ++kk) {
      const uint32_t a[4] = {pack_floats<T>(s[2 * kk][0], s[2 * kk][1]), pack_floats<T>(s[2 * kk][2], s[2 * kk][3]),
                             pack_floats<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             pack_floats<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      const int key = kk * 16 + 2 * tig;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        const int dim = dt * 8 + group;
        const uint32_t bf[2] = {pack_pair<T>(vs[key][dim], vs[key + 1][dim]),
                                pack_pair<T>(vs[key + 8][dim], vs[key + 9][dim])};
        mma_16816<T>(o[dt], a, bf);
      }
    }
  }

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
    inv[r] = 1.0f / row_sum[r];
  }
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
    const int c = dt * 8 + 2 * tig;
    if (row0 < p.tq) {  // select, not multiply: exact zeros for padded rows
      const float x = in0 ? o[dt][0] * inv[0] : 0.0f, y = in0 ? o[dt][1] * inv[0] : 0.0f;
      store_vec<2>(out + static_cast<int64_t>(row0) * D + c, Vec<T, 2>{{from_float<T>(x), from_float<T>(y)}});
    }
    if (row1 < p.tq) {
      const float x = in1 ? o[dt][2] * inv[1] : 0.0f, y = in1 ? o[dt][3] * inv[1] : 0.0f;
      store_vec<2>(out + static_cast<int64_t>(row1) * D + c, Vec<T, 2>{{from_float<T>(x), from_float<T>(y)}});
    }
  }
}

constexpr int kSimtRows = 32, kSimtKeys = 32, kSimtThreads = 128, kLanesPerRow = 4;

template <class T, int D>
__global__ void __launch_bounds__(kSimtThreads) attention_simt_kernel(AttnArgs p) {
  constexpr int P = D / kLanesPerRow;  // dims per thread, interleaved: d = part + 4 i
  __shared__ __align__(16) T ks[kSimtKeys][D];
  __shared__ __align__(16) T vs[kSimtKeys][D];
  const int bh = blockIdx.x, b = bh / p.heads, h = bh % p.heads;
  const int m0 = blockIdx.y * kSimtRows;
  const int q_len = valid_length(p.q_lengths, b, p.tq), kv_len = valid_length(p.kv_lengths, b, p.tk);
  T* out = static_cast<T*>(p.out) + static_cast<int64_t>(bh) * p.tq * D;
  if (m0 >= q_len || kv_len == 0) {
    zero_rows<T, D, kSimtThreads>(out, m0, kSimtRows, p.tq);
    return;
  }
  const T* q = static_cast<const T*>(p.q) + b * p.q_sb + h * p.q_sh;
  const T* k = static_cast<const T*>(p.k) + b * p.k_sb + h * p.k_sh;
  const T* v = static_cast<const T*>(p.v) + b * p.v_sb + h * p.v_sh;
  const int row = m0 + threadIdx.x / kLanesPerRow, part = threadIdx.x % kLanesPerRow;

  float qv[P], acc[P];
#pragma unroll
  for (int i = 0; i < P; ++i) {
    qv[i] = row < q_len ? to_float(q[static_cast<int64_t>(row) * p.q_st + part + kLanesPerRow * i]) * p.scale_log2
                        : 0.0f;
    acc[i] = 0.0f;
  }
  float row_max = -INFINITY, row_sum = 0.0f;
  for (int n0 = 0; n0 < kv_len; n0 += kSimtKeys) {
    __syncthreads();
    load_tile<T, kSimtKeys, D, D, kSimtThreads>(ks, k, p.k_st, n0, kv_len, p.kv_vec);
    load_tile<T, kSimtKeys, D, D, kSimtThreads>(vs, v, p.v_st, n0, kv_len, p.kv_vec);
    __syncthreads();
    float s[kSimtKeys];
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < kSimtKeys; ++j) {
      float partial = 0.0f;
#pragma unroll
      for (int i = 0; i < P; ++i) partial += qv[i] * to_float(ks[j][part + kLanesPerRow * i]);
      partial += __shfl_xor_sync(0xffffffffu, partial, 1);
      partial += __shfl_xor_sync(0xffffffffu, partial, 2);
      s[j] = n0 + j < kv_len ? partial : -INFINITY;
      tile_max = fmaxf(tile_max, s[j]);
    }
    const float new_max = fmaxf(row_max, tile_max);
    const float base = new_max == -INFINITY ? 0.0f : new_max;
    const float correction = exp2f(row_max - base);
    row_max = new_max;
    row_sum *= correction;
#pragma unroll
    for (int i = 0; i < P; ++i) acc[i] *= correction;
#pragma unroll
    for (int j = 0; j < kSimtKeys; ++j) {
      const float w = exp2f(s[j] - base);
      row_sum += w;
#pragma unroll
      for (int i = 0; i < P; ++i) acc[i] += w * to_float(vs[j][part + kLanesPerRow * i]);
    }
  }
  if (row < p.tq) {
    const float inv = 1.0f / row_sum;
#pragma unroll
    for (int i = 0; i < P; ++i)
      out[static_cast<int64_t>(row) * D + part + kLanesPerRow * i] =
          from_float<T>(row < q_len ? acc[i] * inv : 0.0f);
  }
}

template <class T, int D>
int launch_head_dim(const AttnArgs& args, int batch_heads, void* stream) {
  if constexpr (std::is_same<T, float>::value) {
    auto* kernel = &attention_simt_kernel<T, D>;
    const dim3 grid(batch_heads, (args.tq + kSimtRows - 1) / kSimtRows);
    ET_LAUNCH(kernel, grid, kSimtThreads, stream, args);
  } else {
    auto* kernel = &attention_mma_kernel<T, D>;
    const dim3 grid(batch_heads, (args.tq + kMmaRows - 1) / kMmaRows);
    ET_LAUNCH(kernel, grid, kMmaThreads, stream, args);
  }
  return check_launch("easytune_attention_fwd");
}

template <class T>
int launch_typed(const AttnArgs& args, int batch_heads, int head_dim, void* stream) {
  switch (head_dim) {
    case 32: return launch_head_dim<T, 32>(args, batch_heads, stream);
    case 64: return launch_head_dim<T, 64>(args, batch_heads, stream);
    default: return launch_head_dim<T, 128>(args, batch_heads, stream);
  }
}

}  // namespace attn
}  // namespace et
