// Emulator stand-in for <cuda_runtime.h>: only what csrc/cuda/ calls (see ../emu.h).
#pragma once
#include "../emu.h"

#include <cstdlib>
#include <cstring>

typedef struct CUstream_st* cudaStream_t;
typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorNotReady = 600;
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin, cudaDevAttrComputeCapabilityMajor };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2 };
constexpr unsigned cudaHostAllocDefault = 0, cudaEventDisableTiming = 2;

// Kernels run to completion inside their launch, so every copy has landed and every event has
// completed by the time the host looks; NEUMF_EMU_EVENTS_PENDING=1 makes cudaEventQuery answer
// "not ready" (a GPU still busy), so the tests see what the host does then.
struct CUevent_st {};
typedef CUevent_st* cudaEvent_t;

inline cudaError_t cudaGetDevice(int* device) {
  *device = emu::current_device();
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  ++emu::counters().attribute_queries;
  *value = attr == cudaDevAttrComputeCapabilityMajor ? emu::device_major() : emu::device_limit_smem();
  return cudaSuccess;
}

inline cudaError_t cudaGetLastError() { return cudaSuccess; }

inline cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned) {
  *ptr = std::malloc(bytes);
  return *ptr != nullptr ? cudaSuccess : 2;
}

inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  if (kind == cudaMemcpyDeviceToHost) ++emu::counters().host_copies;
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}

inline cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t) {
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}

inline cudaError_t cudaStreamSynchronize(cudaStream_t) {
  ++emu::counters().stream_syncs;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceSynchronize() {
  ++emu::counters().stream_syncs;
  return cudaSuccess;
}

inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned) {
  *event = new CUevent_st;
  return cudaSuccess;
}

inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }

inline cudaError_t cudaEventQuery(cudaEvent_t) {
  ++emu::counters().event_queries;
  const char* pending = std::getenv("NEUMF_EMU_EVENTS_PENDING");
  return pending != nullptr && std::strcmp(pending, "1") == 0 ? cudaErrorNotReady : cudaSuccess;
}

inline cudaError_t cudaEventSynchronize(cudaEvent_t) {
  ++emu::counters().event_waits;
  return cudaSuccess;
}

template <typename F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute, int bytes) {
  if (bytes > emu::device_limit_smem()) emu::fail("cudaFuncSetAttribute above the device's shared memory limit");
  emu::smem_allowed()[reinterpret_cast<const void*>(kernel)] = bytes;
  return cudaSuccess;
}
