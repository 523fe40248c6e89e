// Emulator stand-in for <cuda_runtime.h>: only what csrc/cuda/ calls (see ../emu.h).
#pragma once
#include "../emu.h"

typedef struct CUstream_st* cudaStream_t;
typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin, cudaDevAttrComputeCapabilityMajor };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };

inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrComputeCapabilityMajor ? emu::device_major() : emu::device_limit_smem();
  return cudaSuccess;
}

template <typename F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute, int bytes) {
  if (bytes > emu::device_limit_smem()) emu::fail("cudaFuncSetAttribute above the device's shared memory limit");
  emu::smem_allowed()[reinterpret_cast<const void*>(kernel)] = bytes;
  return cudaSuccess;
}
