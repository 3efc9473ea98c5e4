// Library information and the error state of the C ABI.
#include <cstdarg>
#include <cstdio>

#include "common.cuh"

#ifndef EASYTUNE_CUDA_ARCH_LIST
#ifdef EASYTUNE_EMULATE
#define EASYTUNE_CUDA_ARCH_LIST "emulated"
#else
#error "EASYTUNE_CUDA_ARCH_LIST must be defined by the build (CMakeLists.txt)"
#endif
#endif

namespace et {
namespace {

thread_local char g_error[1024] = "";

#ifndef EASYTUNE_EMULATE
__global__ void probe_kernel() {}
#endif

}  // namespace

int set_error(int code, const char* format, ...) {
  va_list args;
  va_start(args, format);
  vsnprintf(g_error, sizeof(g_error), format, args);
  va_end(args);
  return code;
}

void clear_error() { g_error[0] = '\0'; }

int check_launch(const char* op) {
#ifdef EASYTUNE_EMULATE
  if (::et_emu::last_status() != cudaSuccess)
    return set_error(EASYTUNE_CUDA_ERR_CUDA, "%s: emulated launch failed: %s", op, ::et_emu::last_message());
#else
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    return set_error(EASYTUNE_CUDA_ERR_CUDA, "%s: kernel launch failed: %s (%s)", op, cudaGetErrorString(err),
                     cudaGetErrorName(err));
#endif
  return EASYTUNE_CUDA_OK;
}

int check_dtype(const char* op, int dtype) {
  if (dtype == EASYTUNE_FLOAT32 || dtype == EASYTUNE_FLOAT16 || dtype == EASYTUNE_BFLOAT16) return EASYTUNE_CUDA_OK;
  return set_error(EASYTUNE_CUDA_ERR_INVALID, "%s: dtype code %d is not 0 (float32), 1 (float16) or 2 (bfloat16)",
                   op, dtype);
}

}  // namespace et

extern "C" {

EASYTUNE_API int easytune_cuda_abi_version(void) { return EASYTUNE_CUDA_ABI_VERSION; }

EASYTUNE_API int easytune_cuda_version(void) {
#ifdef EASYTUNE_EMULATE
  return 0;
#else
  return CUDART_VERSION;
#endif
}

EASYTUNE_API const char* easytune_cuda_archs(void) { return EASYTUNE_CUDA_ARCH_LIST; }

EASYTUNE_API const char* easytune_cuda_last_error(void) { return et::g_error; }

EASYTUNE_API int easytune_cuda_device_count(int* count) {
  et::clear_error();
  if (!count) return et::set_error(EASYTUNE_CUDA_ERR_INVALID, "easytune_cuda_device_count: count is null");
#ifdef EASYTUNE_EMULATE
  *count = 0;
#else
  *count = 0;
  const cudaError_t err = cudaGetDeviceCount(count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it
    return et::set_error(EASYTUNE_CUDA_ERR_CUDA, "easytune_cuda_device_count: %s (%s)", cudaGetErrorString(err),
                         cudaGetErrorName(err));
  }
#endif
  return EASYTUNE_CUDA_OK;
}

EASYTUNE_API int easytune_cuda_probe(void) {
  et::clear_error();
#ifndef EASYTUNE_EMULATE
  cudaFuncAttributes attributes;
  const cudaError_t err = cudaFuncGetAttributes(&attributes, et::probe_kernel);
  if (err != cudaSuccess) {
    cudaGetLastError();
    int device = -1;
    cudaGetDevice(&device);
    cudaGetLastError();
    return et::set_error(EASYTUNE_CUDA_ERR_CUDA, "easytune_cuda_probe: device %d: %s (%s); library code: %s", device,
                         cudaGetErrorString(err), cudaGetErrorName(err), EASYTUNE_CUDA_ARCH_LIST);
  }
#endif
  return EASYTUNE_CUDA_OK;
}

}  // extern "C"
