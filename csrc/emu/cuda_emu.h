// Host emulation of the CUDA features the kernels of csrc/ use, so that the same sources compile with
// a plain C++ compiler (-DEASYTUNE_EMULATE) into a CPU library with the same C ABI. Tests use it to
// check indexing, masking, reductions and the math against the PyTorch references without a GPU.
//
// Model: a launch runs its blocks one after another; the threads of a block are cooperative fibers
// (ucontext) on the calling thread, switched at __syncthreads() and at warp-synchronous operations
// (shuffles, __syncwarp, mma). __shared__ becomes a function-local static, shared by a block's fibers.
// Misuse that is undefined on a GPU is reported as a launch error instead: a barrier reached by only
// part of a block or warp (deadlock), warp operations with exited lanes or a partial mask, misaligned
// vector accesses. Not modelled: concurrency between blocks, the memory model, timing. The state is
// global: one launch at a time per process (not thread-safe).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <driver_types.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>

namespace et_emu {

void launch(dim3 grid, dim3 block, const std::function<void()>& body);
// First error of the last launch (cudaSuccess = none) and its message; cleared by the next launch.
cudaError_t last_status();
const char* last_message();
void fail(const char* message);

const uint3& thread_idx();
extern uint3 g_block_idx;
extern dim3 g_block_dim;
extern dim3 g_grid_dim;

void sync_block();
void sync_warp(unsigned mask);
unsigned lane_id();
// Per-warp exchange slots (one per lane) for the warp-synchronous operations.
uint64_t* warp_slots();

template <class T>
T shfl_xor(unsigned mask, T value, int lane_mask) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a type wider than 64 bits");
  uint64_t* slots = warp_slots();
  const unsigned lane = lane_id();
  sync_warp(mask);
  std::memcpy(&slots[lane], &value, sizeof(T));
  sync_warp(mask);
  T out;
  std::memcpy(&out, &slots[(lane ^ static_cast<unsigned>(lane_mask)) & 31u], sizeof(T));
  sync_warp(mask);
  return out;
}

template <class T>
T shfl_idx(unsigned mask, T value, int src_lane) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a type wider than 64 bits");
  uint64_t* slots = warp_slots();
  sync_warp(mask);
  std::memcpy(&slots[lane_id()], &value, sizeof(T));
  sync_warp(mask);
  T out;
  std::memcpy(&out, &slots[static_cast<unsigned>(src_lane) & 31u], sizeof(T));
  sync_warp(mask);
  return out;
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 with the fragment layout of the
// PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type"): products are exact in
// fp32 and summed in k order, so results can differ from the tensor core in the last bits only.
void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4], bool bf16);

void check_aligned(const void* p, size_t alignment);

}  // namespace et_emu

#define threadIdx (::et_emu::thread_idx())
#define blockIdx (::et_emu::g_block_idx)
#define blockDim (::et_emu::g_block_dim)
#define gridDim (::et_emu::g_grid_dim)
#define warpSize 32
#define __syncthreads() ::et_emu::sync_block()
#define __syncwarp(mask) ::et_emu::sync_warp(mask)
#undef __shared__
#define __shared__ static
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

template <class T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  return ::et_emu::shfl_xor(mask, value, lane_mask);
}
template <class T>
inline T __shfl_sync(unsigned mask, T value, int src_lane) {
  return ::et_emu::shfl_idx(mask, value, src_lane);
}
