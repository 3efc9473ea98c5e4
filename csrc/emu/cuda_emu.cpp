// Fiber scheduler of the host emulation (see cuda_emu.h).
#include "cuda_emu.h"

#include <ucontext.h>

#include <string>
#include <vector>

namespace et_emu {

uint3 g_block_idx;
dim3 g_block_dim;
dim3 g_grid_dim;

namespace {

enum class State { kRunnable, kBlockBarrier, kWarpBarrier, kDone };

struct Fiber {
  ucontext_t ctx;
  uint3 tid;
  unsigned linear = 0;
  State state = State::kDone;
  std::vector<char> stack;
};

struct MmaLane {
  uint32_t a[4];
  uint32_t b[2];
  float c[4];
};

constexpr size_t kStackBytes = 256 * 1024;
constexpr unsigned kFullMask = 0xffffffffu;

std::vector<Fiber> g_fibers;
std::vector<uint64_t> g_slots;
std::vector<MmaLane> g_mma;
Fiber* g_current = nullptr;
ucontext_t g_scheduler;
const std::function<void()>* g_body = nullptr;
cudaError_t g_status = cudaSuccess;
std::string g_message;

void fiber_entry() {
  (*g_body)();
  g_current->state = State::kDone;  // returning resumes uc_link, the scheduler
}

void yield(State state) {
  Fiber* f = g_current;
  f->state = state;
  swapcontext(&f->ctx, &g_scheduler);
}

float half_bits_to_float(uint32_t bits, bool bf16) {
  if (bf16) {
    __nv_bfloat16_raw raw;
    raw.x = static_cast<unsigned short>(bits);
    return __bfloat162float(__nv_bfloat16(raw));
  }
  __half_raw raw;
  raw.x = static_cast<unsigned short>(bits);
  return __half2float(__half(raw));
}

// Runs the fibers of one block until all finish; false (and an error recorded) on a deadlock.
bool run_block(unsigned n) {
  for (;;) {
    for (unsigned i = 0; i < n; ++i) {
      if (g_fibers[i].state != State::kRunnable) continue;
      g_current = &g_fibers[i];
      swapcontext(&g_scheduler, &g_fibers[i].ctx);
      g_current = nullptr;
    }
    bool released = false;
    unsigned done = 0, at_block = 0, at_warp = 0;
    for (unsigned w0 = 0; w0 < n; w0 += 32) {
      const unsigned lanes = (n - w0 < 32) ? n - w0 : 32;
      unsigned warp_waiting = 0, warp_done = 0;
      for (unsigned i = w0; i < w0 + lanes; ++i) {
        warp_waiting += g_fibers[i].state == State::kWarpBarrier;
        warp_done += g_fibers[i].state == State::kDone;
      }
      if (warp_waiting == lanes) {
        for (unsigned i = w0; i < w0 + lanes; ++i) g_fibers[i].state = State::kRunnable;
        released = true;
      } else if (warp_waiting > 0 && warp_waiting + warp_done == lanes) {
        fail("warp-synchronous operation (shuffle/__syncwarp/mma) after some lanes of the warp exited");
        return false;
      }
    }
    if (released) continue;
    for (unsigned i = 0; i < n; ++i) {
      done += g_fibers[i].state == State::kDone;
      at_block += g_fibers[i].state == State::kBlockBarrier;
      at_warp += g_fibers[i].state == State::kWarpBarrier;
    }
    if (done == n) return true;
    if (at_block == n) {
      for (unsigned i = 0; i < n; ++i) g_fibers[i].state = State::kRunnable;
      continue;
    }
    if (at_warp == 0 && done > 0) {
      fail("__syncthreads() reached after some threads of the block exited");
    } else {
      fail("deadlock: threads of one block wait at different barriers (divergent __syncthreads/warp op)");
    }
    return false;
  }
}

}  // namespace

const uint3& thread_idx() { return g_current->tid; }
unsigned lane_id() { return g_current->linear % 32; }
uint64_t* warp_slots() { return &g_slots[(g_current->linear / 32) * 32]; }

void sync_block() { yield(State::kBlockBarrier); }

void sync_warp(unsigned mask) {
  if (mask != kFullMask) fail("warp operation with a partial lane mask (not emulated)");
  yield(State::kWarpBarrier);
}

void fail(const char* message) {
  if (g_status != cudaSuccess) return;
  g_status = cudaErrorLaunchFailure;
  g_message = message;
}

cudaError_t last_status() { return g_status; }
const char* last_message() { return g_message.c_str(); }

void check_aligned(const void* p, size_t alignment) {
  if (reinterpret_cast<uintptr_t>(p) % alignment != 0) fail("misaligned vector memory access");
}

void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4], bool bf16) {
  MmaLane* lanes = &g_mma[(g_current->linear / 32) * 32];
  const unsigned lane = lane_id();
  sync_warp(kFullMask);
  std::memcpy(lanes[lane].a, a, sizeof(lanes[lane].a));
  std::memcpy(lanes[lane].b, b, sizeof(lanes[lane].b));
  std::memcpy(lanes[lane].c, c, sizeof(lanes[lane].c));
  sync_warp(kFullMask);
  const unsigned group = lane >> 2, tig = lane & 3;
  float out[4];
  for (unsigned i = 0; i < 4; ++i) {
    const unsigned row = group + 8 * (i >= 2), col = 2 * tig + (i & 1);
    float acc = lanes[lane].c[i];
    for (unsigned k = 0; k < 16; ++k) {
      // A (row-major 16x16): lane 4*(row%8) + (k%8)/2 holds it as element (k&1) + 2*(row>=8) + 4*(k>=8).
      const unsigned ja = (k & 1) + 2 * (row >= 8) + 4 * (k >= 8);
      const uint32_t wa = lanes[4 * (row % 8) + (k % 8) / 2].a[ja / 2] >> (16 * (ja % 2));
      // B (16x8, "col"): lane 4*col + (k%8)/2 holds it as element (k&1) + 2*(k>=8).
      const unsigned jb = (k & 1) + 2 * (k >= 8);
      const uint32_t wb = lanes[4 * col + (k % 8) / 2].b[jb / 2] >> (16 * (jb % 2));
      acc += half_bits_to_float(wa & 0xffffu, bf16) * half_bits_to_float(wb & 0xffffu, bf16);
    }
    out[i] = acc;
  }
  sync_warp(kFullMask);
  std::memcpy(d, out, sizeof(out));
}

void launch(dim3 grid, dim3 block, const std::function<void()>& body) {
  g_status = cudaSuccess;
  g_message.clear();
  const unsigned n = block.x * block.y * block.z;
  if (n == 0 || n > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) {
    fail("invalid launch configuration");
    return;
  }
  if (g_fibers.size() < n) {
    g_fibers.resize(n);
    for (Fiber& f : g_fibers) f.stack.resize(kStackBytes);
  }
  const unsigned warps = (n + 31) / 32;
  g_slots.assign(warps * 32, 0);
  g_mma.assign(warps * 32, MmaLane{});
  g_grid_dim = grid;
  g_block_dim = block;
  g_body = &body;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        g_block_idx = make_uint3(x, y, z);
        for (unsigned i = 0; i < n; ++i) {
          Fiber& f = g_fibers[i];
          f.linear = i;
          f.tid = make_uint3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
          f.state = State::kRunnable;
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.data();
          f.ctx.uc_stack.ss_size = f.stack.size();
          f.ctx.uc_link = &g_scheduler;
          makecontext(&f.ctx, fiber_entry, 0);
        }
        if (!run_block(n)) return;
      }
    }
  }
}

}  // namespace et_emu
