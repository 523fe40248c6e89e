// A CPU emulator of the small part of CUDA that csrc/cuda/ uses, so that the CUDA sources can
// run (slowly) against the reference on a machine without a GPU.  Force-included (-include) in
// front of every emulated source; tests/cuda_emu/build.py explains the source rewrites.
//
// Every CUDA thread of a block is an OS thread.  __syncthreads is a barrier of the block's
// threads; warp intrinsics (__shfl*_sync, __ballot_sync) are barriers of the warp's 32 threads
// that exchange values through a per-warp buffer, so all 32 lanes must reach them together, as
// on the GPU: a divergent shuffle or __syncthreads deadlocks, and a watchdog aborts the process
// when no barrier has completed for 120 s.  Blocks run one after another.  Dynamic shared memory is filled with 0xFF
// bytes (NaN for floats) before each block, so reading a value no thread wrote shows up.
// Launches check what the GPU checks: block size, grid size, and dynamic shared memory against
// cudaFuncSetAttribute and the device limit.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <tuple>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3() = default;
  dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace emu {

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "cuda emulator: %s\n", what);
  std::fflush(stderr);
  std::abort();
}

// Time of the last barrier any emulated thread passed: the watchdog of each launch aborts when
// it stops moving (a deadlock is a bug in the emulated code).
inline std::atomic<long long>& last_progress() {
  static std::atomic<long long> ns{0};
  return ns;
}

inline long long now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A reusable barrier on futexes (std::atomic wait/notify): cheap with hundreds of threads.
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait(const char* /*what: for the reader; the watchdog reports a stuck barrier*/) {
    const long generation = generation_.load();
    if (arrived_.fetch_add(1) + 1 == count_) {
      arrived_.store(0);
      last_progress().store(now_ns());
      generation_.fetch_add(1);
      generation_.notify_all();
      return;
    }
    generation_.wait(generation);
  }

 private:
  int count_;
  std::atomic<int> arrived_{0};
  std::atomic<long> generation_{0};
};

struct Block {
  explicit Block(unsigned threads, size_t smem_bytes)
      : block_barrier(static_cast<int>(threads)), smem_size(smem_bytes + 1),
        smem(static_cast<unsigned char*>(std::aligned_alloc(128, (smem_bytes + 128) / 128 * 128)), std::free) {
    for (unsigned w = 0; w * 32 < threads; ++w) {
      const unsigned lanes = threads - w * 32 < 32 ? threads - w * 32 : 32;
      warp_barriers.emplace_back(std::make_unique<Barrier>(static_cast<int>(lanes)));
      slots.emplace_back(32, 0);
    }
  }
  Barrier block_barrier;
  std::vector<std::unique_ptr<Barrier>> warp_barriers;
  std::vector<std::vector<uint64_t>> slots;  // per warp, per lane: the value a lane offers
  size_t smem_size;
  std::unique_ptr<unsigned char, void (*)(void*)> smem;  // 128-byte aligned, as `__align__(128)` asks
};

inline thread_local Block* current = nullptr;

}  // namespace emu

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

inline void __syncthreads() { emu::current->block_barrier.wait("__syncthreads never reached by every thread of the block"); }

namespace emu {

// Every lane offers `value`; returns what lane `from(lane)` offered.
template <typename T, typename From>
T exchange(T value, From from) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "warp exchange of a type wider than 64 bits");
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  auto& slots = current->slots[warp];
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  slots[lane] = bits;
  current->warp_barriers[warp]->wait("a warp shuffle/ballot not reached by every lane of the warp");
  T out;
  const uint64_t got = slots[from(lane) % 32];
  std::memcpy(&out, &got, sizeof(T));
  current->warp_barriers[warp]->wait("a warp shuffle/ballot not reached by every lane of the warp");
  return out;
}

}  // namespace emu

template <typename T>
T __shfl_sync(unsigned, T value, int src) {
  return emu::exchange(value, [src](unsigned) { return static_cast<unsigned>(src); });
}

template <typename T>
T __shfl_xor_sync(unsigned, T value, int mask) {
  return emu::exchange(value, [mask](unsigned lane) { return lane ^ static_cast<unsigned>(mask); });
}

inline unsigned __ballot_sync(unsigned, int predicate) {
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  auto& slots = emu::current->slots[warp];
  slots[lane] = predicate != 0;
  emu::current->warp_barriers[warp]->wait("__ballot_sync not reached by every lane of the warp");
  unsigned bits = 0;
  const unsigned lanes = blockDim.x - warp * 32 < 32 ? blockDim.x - warp * 32 : 32;
  for (unsigned l = 0; l < lanes; ++l) bits |= static_cast<unsigned>(slots[l] != 0) << l;
  emu::current->warp_barriers[warp]->wait("__ballot_sync not reached by every lane of the warp");
  return bits;
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }

template <typename T>
T atomicAdd(T* address, T value) {
  static std::mutex mutex;  // atomics are rare in the emulated tests; one lock per type is enough
  std::lock_guard<std::mutex> lock(mutex);
  const T old = *address;
  *address = old + value;
  return old;
}

// CUDA's vector type and sm_90's vector atomic (per element atomic, as on the GPU).  The device
// code takes its sm_90 paths under the emulator (NEUMF_CUDA_EMULATOR), counted for the tests.
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
#define NEUMF_CUDA_EMULATOR 1
namespace emu {
inline std::atomic<long long>& vector_atomics() {
  static std::atomic<long long> n{0};
  return n;
}
}  // namespace emu

inline float4 atomicAdd(float4* address, float4 value) {
  ++emu::vector_atomics();
  float* f = reinterpret_cast<float*>(address);
  return {atomicAdd(f, value.x), atomicAdd(f + 1, value.y), atomicAdd(f + 2, value.z), atomicAdd(f + 3, value.w)};
}

inline unsigned long long atomicExch(unsigned long long* address, unsigned long long value) {
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  const auto old = *address;
  *address = value;
  return old;
}

// Vector accesses of csrc/cuda/common.cuh: misaligned ones fault on the GPU, so they fail here.
#define NEUMF_CHECK_ALIGNED(ptr, bytes)                                                        \
  do {                                                                                         \
    if (reinterpret_cast<std::uintptr_t>(ptr) % (bytes) != 0) emu::fail("misaligned vector access"); \
  } while (0)

[[noreturn]] inline void __trap() { emu::fail("__trap() in an emulated kernel"); }

namespace emu {

// The emulated device: sm_90 with 227 KiB of opt-in shared memory per block (H100 / H200),
// unless NEUMF_EMU_SM / NEUMF_EMU_SMEM say otherwise (read at every query, so tests can vary them).
inline int device_limit_smem() {
  const char* env = std::getenv("NEUMF_EMU_SMEM");
  return env ? std::atoi(env) : 232448;
}

inline int device_major() {
  const char* env = std::getenv("NEUMF_EMU_SM");
  return (env ? std::atoi(env) : 90) / 10;
}

// What the host code asked of the runtime, for the tests that count host waits
// (tests/cuda_emu/counters.cpp exposes them as torch.ops.neumf_fast_emu._emu_counters()).
struct Counters {
  std::atomic<long long> stream_syncs{0};       // cudaStreamSynchronize / cudaDeviceSynchronize
  std::atomic<long long> event_waits{0};        // cudaEventSynchronize
  std::atomic<long long> event_queries{0};      // cudaEventQuery
  std::atomic<long long> attribute_queries{0};  // cudaDeviceGetAttribute
  std::atomic<long long> host_copies{0};        // cudaMemcpyAsync device -> host
};

inline Counters& counters() {
  static Counters c;
  return c;
}

// The current device: NEUMF_EMU_DEVICE (default 0), so that a test can give a device other
// attributes (NEUMF_EMU_SM) than the one the host code has already cached.
inline int current_device() {
  const char* env = std::getenv("NEUMF_EMU_DEVICE");
  return env ? std::atoi(env) : 0;
}

// Dynamic shared memory each kernel was allowed (cudaFuncSetAttribute), default 48 KiB.
inline std::map<const void*, int>& smem_allowed() {
  static std::map<const void*, int> allowed;
  return allowed;
}

inline unsigned char* dynamic_smem() { return current->smem.get(); }

struct Launch {
  dim3 grid, block;
  size_t smem;
  template <typename G, typename B>
  Launch(G g, B b, size_t smem_bytes = 0, const void* /*stream*/ = nullptr)
      : grid(static_cast<unsigned>(g)), block(static_cast<unsigned>(b)), smem(smem_bytes) {}

  template <typename... P, typename... A>
  void operator()(void (*kernel)(P...), A&&... args) const {
    if (block.x == 0 || block.x > 1024) fail("block size must be 1..1024 threads");
    if (grid.x == 0 || grid.x > 2147483647u) fail("grid size must be 1..2^31-1 blocks");
    auto it = smem_allowed().find(reinterpret_cast<const void*>(kernel));
    const size_t allowed = it == smem_allowed().end() ? 48 * 1024 : static_cast<size_t>(it->second);
    if (smem > allowed) fail("dynamic shared memory above what cudaFuncSetAttribute allowed (48 KiB by default)");
    std::tuple<std::decay_t<A>...> values(std::forward<A>(args)...);
    Block shared(block.x, smem);
    Barrier between_blocks(static_cast<int>(block.x));
    const dim3 grid_dim = grid, block_dim = block;
    std::atomic<bool> done{false};
    last_progress().store(now_ns());
    std::thread watchdog([&] {
      while (!done.load()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        if (!done.load() && now_ns() - last_progress().load() > 120'000'000'000LL) {
          fail("no thread passed a barrier for 120 s: a __syncthreads or warp shuffle not reached by every thread");
        }
      }
    });
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block.x; ++t) {
      threads.emplace_back([&, t] {
        current = &shared;
        threadIdx = dim3(t);
        blockDim = block_dim;
        gridDim = grid_dim;
        for (unsigned b = 0; b < grid_dim.x; ++b) {
          if (t == 0) std::memset(shared.smem.get(), 0xFF, shared.smem_size);
          between_blocks.wait("emulator: block start");
          blockIdx = dim3(b);
          std::apply([&](const auto&... v) { kernel(v...); }, values);
          between_blocks.wait("a thread did not finish its block (divergent __syncthreads?)");
        }
        current = nullptr;
      });
    }
    for (auto& th : threads) th.join();
    done.store(true);
    watchdog.join();
  }
};

}  // namespace emu
