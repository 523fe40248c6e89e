// Host side of the CUDA kernels' id range check, in the modes of NEUMF_FAST_CHECK_IDS (the same
// modes, record and messages as the Triton backend's neumf_fast/ops/_id_check.py):
//
// - the kernels never read a row outside the table; they record a bad id in a persistent
//   per-device record, int64 {user flag, user id, item flag, item id}, sticky until reported;
// - `deferred` (default): after the launch, a 32-byte asynchronous copy of the record into
//   pinned host memory and an event.  The next forward on the device waits on that (previous)
//   event and raises IndexError if the record was set; the backward looks only if the event has
//   completed (cudaEventQuery, no wait).  The host never waits for the current call's kernels.
// - `sync`: the same copy, then a wait for the stream and the IndexError at the call itself.
// - while a CUDA graph is captured nothing can be read back: the forward launches a one-thread
//   kernel that traps when the record is set (csrc/cuda/fused_input_forward.cu).
// After raising, the record is cleared, so the process and its CUDA context go on working.
//
// The device attributes the launches need (compute capability, opt-in shared memory) are read
// once per device with the record, not per call.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace neumf_fast {
namespace cuda {

enum class IdCheckMode { kDeferred, kSync };

// NEUMF_FAST_CHECK_IDS, read at every call with ids (as the Python side does).
inline IdCheckMode id_check_mode() {
  const char* value = std::getenv("NEUMF_FAST_CHECK_IDS");
  if (value == nullptr || std::strcmp(value, "deferred") == 0) return IdCheckMode::kDeferred;
  TORCH_CHECK_VALUE(std::strcmp(value, "sync") == 0,
                    "neumf_fast: NEUMF_FAST_CHECK_IDS must be one of ('deferred', 'sync'), got '", value, "'");
  return IdCheckMode::kSync;
}

inline bool capturing() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

struct DeviceState {
  std::mutex mutex;
  std::atomic<bool> ready{false};
  std::atomic<bool> pending{false};  // a copy of the record was scheduled and not read yet
  at::Tensor* record = nullptr;      // int64 [4] on the device (never freed: lives as long as the process)
  int64_t* host = nullptr;           // pinned [4], the copy's destination
  cudaEvent_t event = nullptr;       // recorded after the copy
  int64_t rows[2] = {0, 0};          // table rows of the call whose copy is pending (for the message)
  int index = 0;                     // the device
  int major = 0;                     // compute capability
  int smem_optin = 0;                // opt-in dynamic shared memory per block, bytes
};

inline std::array<DeviceState, 64>& all_device_states() {
  static std::array<DeviceState, 64> states;
  return states;
}

// The state of the current device (the caller holds a CUDAGuard), created on first use.
inline DeviceState& device_state(const at::Tensor& like) {
  auto& states = all_device_states();
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  TORCH_CHECK(device >= 0 && device < static_cast<int>(states.size()), "neumf_fast: CUDA device ", device,
              " is past the 64 devices the CUDA kernels keep state for");
  DeviceState& s = states[device];
  if (!s.ready.load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> lock(s.mutex);
    if (!s.ready.load(std::memory_order_relaxed)) {
      s.index = device;
      s.record = new at::Tensor(at::zeros({4}, like.options().dtype(at::kLong)));
      void* host = nullptr;
      C10_CUDA_CHECK(cudaHostAlloc(&host, 4 * sizeof(int64_t), cudaHostAllocDefault));
      s.host = static_cast<int64_t*>(host);
      std::memset(s.host, 0, 4 * sizeof(int64_t));
      C10_CUDA_CHECK(cudaEventCreateWithFlags(&s.event, cudaEventDisableTiming));
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&s.major, cudaDevAttrComputeCapabilityMajor, device));
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&s.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
      s.ready.store(true, std::memory_order_release);
    }
  }
  return s;
}

// Raises IndexError if the host copy holds a bad id, clearing the record first.  Holds s.mutex.
inline void raise_if_recorded(DeviceState& s, cudaStream_t stream) {
  const int64_t user_flag = s.host[0], user_id = s.host[1], item_flag = s.host[2], item_id = s.host[3];
  if (user_flag == 0 && item_flag == 0) return;
  std::memset(s.host, 0, 4 * sizeof(int64_t));
  C10_CUDA_CHECK(cudaMemsetAsync(s.record->data_ptr(), 0, 4 * sizeof(int64_t), stream));
  TORCH_CHECK_INDEX(user_flag == 0, "neumf_fast: user id ", user_id, " is out of range for a table with ", s.rows[0],
                    " rows");
  TORCH_CHECK_INDEX(false, "neumf_fast: item id ", item_id, " is out of range for a table with ", s.rows[1], " rows");
}

// At the start of a forward (`wait`) or a backward (no wait): the IndexError of an earlier call.
inline void raise_pending(DeviceState& s, cudaStream_t stream, bool wait) {
  if (!s.pending.load(std::memory_order_acquire) || capturing()) return;
  std::lock_guard<std::mutex> lock(s.mutex);
  if (!s.pending.load(std::memory_order_relaxed)) return;
  if (wait) {
    C10_CUDA_CHECK(cudaEventSynchronize(s.event));  // the previous call's copy, normally long done
  } else {
    const cudaError_t done = cudaEventQuery(s.event);
    if (done == cudaErrorNotReady) {
      (void)cudaGetLastError();  // not an error: clear it, as c10's CUDAEvent::query does
      return;
    }
    C10_CUDA_CHECK(done);
  }
  s.pending.store(false, std::memory_order_relaxed);
  raise_if_recorded(s, stream);
}

// After the kernels of a call with ids (not while capturing): schedules the read-back of the
// record (deferred) or reads it now and raises (sync).
inline void after_launch(DeviceState& s, cudaStream_t stream, IdCheckMode mode, int64_t user_rows,
                         int64_t item_rows) {
  std::lock_guard<std::mutex> lock(s.mutex);
  s.rows[0] = user_rows;
  s.rows[1] = item_rows;
  C10_CUDA_CHECK(cudaMemcpyAsync(s.host, s.record->data_ptr(), 4 * sizeof(int64_t), cudaMemcpyDeviceToHost, stream));
  if (mode == IdCheckMode::kSync) {
    C10_CUDA_CHECK(cudaStreamSynchronize(stream));  // the one wait of sync mode
    s.pending.store(false, std::memory_order_relaxed);
    raise_if_recorded(s, stream);
    return;
  }
  C10_CUDA_CHECK(cudaEventRecord(s.event, stream));
  s.pending.store(true, std::memory_order_release);
}

// Forgets every recorded bad id and pending read-back (neumf_fast._reset_id_check: the tests,
// or a process that wants a clean start after catching an IndexError elsewhere).
inline void reset_id_checks() {
  for (DeviceState& s : all_device_states()) {
    if (!s.ready.load(std::memory_order_acquire)) continue;
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.pending.load(std::memory_order_relaxed)) C10_CUDA_CHECK(cudaEventSynchronize(s.event));
    s.pending.store(false, std::memory_order_relaxed);
    std::memset(s.host, 0, 4 * sizeof(int64_t));
    s.record->zero_();
  }
}

}  // namespace cuda
}  // namespace neumf_fast
