// Internal helpers shared by the kernels of csrc/ (not part of the C ABI).
// Compiled by nvcc for the GPU library, or by a host C++ compiler with -DEASYTUNE_EMULATE for the
// CPU emulation used in tests (emu/cuda_emu.h); the kernels are the same source in both.
#pragma once

#ifdef EASYTUNE_EMULATE
#include "emu/cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "easytune_cuda.h"

// Launches `kernel` (a function pointer: template arguments would split the macro arguments).
#ifdef EASYTUNE_EMULATE
#define ET_LAUNCH(kernel, grid, block, stream, ...) \
  ((void)(stream), ::et_emu::launch((grid), (block), [&]() { kernel(__VA_ARGS__); }))
#else
#define ET_LAUNCH(kernel, grid, block, stream, ...) \
  kernel<<<(grid), (block), 0, static_cast<cudaStream_t>(stream)>>>(__VA_ARGS__)
#endif

namespace et {

// ---- error reporting (api.cu): the message easytune_cuda_last_error() returns ----
int set_error(int code, const char* format, ...) __attribute__((format(printf, 2, 3)));
void clear_error();
// After a launch: EASYTUNE_CUDA_OK, or EASYTUNE_CUDA_ERR_CUDA with "<op>: <CUDA error>" recorded.
int check_launch(const char* op);
// EASYTUNE_CUDA_ERR_INVALID naming `op` and `what` when `dtype` is not an EasytuneDtype.
int check_dtype(const char* op, int dtype);

inline bool is_aligned(const void* p, size_t alignment) {
  return reinterpret_cast<uintptr_t>(p) % alignment == 0;
}

// Blocks for a grid-stride loop over n items.
inline unsigned grid_for(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65536 ? 65536 : blocks));
}

// ---- element types: storage T, math in float ----
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <class To, class From>
__device__ __forceinline__ To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast between types of different sizes");
  To to;
  memcpy(static_cast<void*>(&to), &from, sizeof(To));
  return to;
}

// N consecutive elements moved as one access (16 bytes for the vectorised paths).
template <class T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <int N, class T>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
#ifdef EASYTUNE_EMULATE
  ::et_emu::check_aligned(p, sizeof(Vec<T, N>));
  Vec<T, N> out;
  memcpy(static_cast<void*>(&out), p, sizeof(out));
  return out;
#else
  return *reinterpret_cast<const Vec<T, N>*>(p);
#endif
}

template <int N, class T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& value) {
#ifdef EASYTUNE_EMULATE
  ::et_emu::check_aligned(p, sizeof(Vec<T, N>));
  memcpy(static_cast<void*>(p), &value, sizeof(value));
#else
  *reinterpret_cast<Vec<T, N>*>(p) = value;
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// ---- tensor cores (sm_80+): mma.sync m16n8k16, fp16/bf16 inputs, fp32 accumulators ----
// Two 16-bit elements in one register, `lo` in the low half (the PTX fragment element order).
template <class T>
__device__ __forceinline__ uint32_t pack_floats(float lo, float hi) {
  const Vec<T, 2> pair{{from_float<T>(lo), from_float<T>(hi)}};
  return bit_cast<uint32_t>(pair);
}

template <class T>
__device__ __forceinline__ uint32_t pack_pair(T lo, T hi) {
  const Vec<T, 2> pair{{lo, hi}};
  return bit_cast<uint32_t>(pair);
}

// Two consecutive 16-bit elements (4-byte aligned) as one register.
template <class T>
__device__ __forceinline__ uint32_t load_pair(const T* p) {
  return bit_cast<uint32_t>(load_vec<2>(p));
}

// d += a * b for one 16x8x16 tile (fragment layouts: PTX ISA, mma.m16n8k16 floating point).
template <class T>
__device__ __forceinline__ void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value,
                "mma_16816 takes fp16 or bf16 operands");
#ifdef EASYTUNE_EMULATE
  ::et_emu::mma_m16n8k16(d, a, b, d, std::is_same<T, __nv_bfloat16>::value);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same<T, __half>::value) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#endif
}

}  // namespace et
