// Device helpers shared by the CUDA forward and backward of neumf_fast::fused_input: the
// description of one side (user or item) of a call, id loads, vector loads, and the warp-level
// pooling of one row that both the fused forward and its unfused fallback run.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <optional>

namespace neumf_fast {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// A 16-byte access must be 16-byte aligned on the GPU (else "misaligned address"); the CPU
// emulator (tests/cuda_emu) defines this to check every vector access, the GPU build to nothing.
#ifndef NEUMF_CHECK_ALIGNED
#define NEUMF_CHECK_ALIGNED(ptr, bytes)
#endif

// One side of a call.  The item side is a sequence of length 1 with no mask and no padding.
// Inputs are contiguous (the host entry points make them so); every offset is int64.
struct SideParams {
  const void* src = nullptr;     // scalar_t: dense [B, L, D], or the table [rows, D] for ids
  const void* ids = nullptr;     // int32/int64 [B, L] ([B] for the item), or null for dense input
  const bool* mask = nullptr;    // [B, L] or null (dense user only)
  const void* weight = nullptr;  // scalar_t [H, D], or null: no projection (H == D)
  const void* bias = nullptr;    // scalar_t [H] or null
  void* pooled_out = nullptr;    // acc_t [B, D]: saved for backward (a side with a weight), or null
  void* mf_out = nullptr;        // acc_t [B, h_mf]: the MF half of the projection, saved, or null
  int64_t* err = nullptr;        // [2] {found, id}: an out-of-range id seen by the kernel
  int64_t rows = 0;              // table rows (id input)
  int64_t L = 1, D = 0, H = 0;
  int64_t pad = 0;
  bool ids64 = true, has_pad = false, mean = false;
  bool vec_ok = false;           // src is 16-byte aligned and D is a multiple of the vector width
};

template <typename scalar_t>
using acc_type = at::opmath_type<scalar_t>;

// Elements per 16-byte load.
template <typename scalar_t>
constexpr int vec_width() {
  return 16 / static_cast<int>(sizeof(scalar_t));
}

template <typename scalar_t, int V>
struct alignas(sizeof(scalar_t) * V) VecOf {
  scalar_t v[V];
};

__device__ __forceinline__ int64_t load_id(const void* ids, bool ids64, int64_t p) {
  return ids64 ? static_cast<const int64_t*>(ids)[p] : static_cast<int64_t>(static_cast<const int32_t*>(ids)[p]);
}

// Records an out-of-range id for the host to report (any one of them).
__device__ __forceinline__ void report_bad_id(int64_t* err, int64_t id) {
  if (err != nullptr) {
    err[1] = id;  // racing writers all write some bad id; the flag below is what the host tests
    atomicExch(reinterpret_cast<unsigned long long*>(err), 1ull);
  }
}

// Lanes of a warp that share one position's row: the fewest powers of two covering D with
// V-wide loads, at most 32.  The other lanes take other positions at the same time.
__device__ __forceinline__ int lanes_per_position(int64_t D, int V) {
  int lanes = 1;
  while (lanes < 32 && static_cast<int64_t>(lanes) * V < D) lanes *= 2;
  return lanes;
}

// The warp pools row b of one side: out[c] = scale * sum_l keep[b,l] * x[b,l,c] in op-math,
// scale = 1 / max(1, kept) for mean pooling.  Ids and mask flags are read once per row, 32
// positions at a time (one per lane), and passed to the lanes that load the position by
// shuffles; rows are read with V-wide (16-byte) loads, several positions in flight.
// Writes each column, on lane group 0, through `store(c, value)`.
template <typename scalar_t, int V, typename Store>
__device__ __forceinline__ void pool_row(const SideParams& s, int64_t b, int lane, Store store) {
  using acc_t = acc_type<scalar_t>;
  const scalar_t* src = static_cast<const scalar_t*>(s.src);
  const int64_t L = s.L, D = s.D;
  const int lanes = lanes_per_position(D, V);
  const int groups = 32 / lanes, group = lane / lanes, sub = lane % lanes;
  for (int64_t c_base = 0; c_base < D; c_base += static_cast<int64_t>(lanes) * V) {
    const int64_t c0 = c_base + static_cast<int64_t>(sub) * V;
    const bool col_ok = c0 < D;  // D % V == 0 when V > 1, so the whole vector is in range
    acc_t acc[V];
#pragma unroll
    for (int v = 0; v < V; ++v) acc[v] = acc_t(0);
    int kept = 0;
    for (int64_t l0 = 0; l0 < L; l0 += 32) {
      const int64_t l = l0 + lane;
      bool keep = false;
      int64_t off = 0;
      if (l < L) {
        const int64_t p = b * L + l;
        if (s.ids != nullptr) {
          const int64_t id = load_id(s.ids, s.ids64, p);
          keep = !(s.has_pad && id == s.pad);
          if (keep && (id < 0 || id >= s.rows)) {
            if (c_base == 0) report_bad_id(s.err, id);
            keep = false;  // never read outside the table
          }
          off = id * D;
        } else {
          keep = s.mask == nullptr || s.mask[p];
          off = p * D;
        }
      }
      kept += __popc(__ballot_sync(kFullMask, keep));
      const int n = static_cast<int>(L - l0 < 32 ? L - l0 : 32);
#pragma unroll 4
      for (int j0 = 0; j0 < n; j0 += groups) {
        const int j = j0 + group;
        const int from = j < n ? j : 0;  // every lane shuffles
        const bool take = __shfl_sync(kFullMask, static_cast<int>(keep), from) != 0 && j < n;
        const int64_t o = __shfl_sync(kFullMask, static_cast<long long>(off), from);
        if (take && col_ok) {
          if constexpr (V > 1) {
            NEUMF_CHECK_ALIGNED(src + o + c0, sizeof(VecOf<scalar_t, V>));
            const auto x = *reinterpret_cast<const VecOf<scalar_t, V>*>(src + o + c0);
#pragma unroll
            for (int v = 0; v < V; ++v) acc[v] += static_cast<acc_t>(x.v[v]);
          } else {
            acc[0] += static_cast<acc_t>(src[o + c0]);
          }
        }
      }
    }
    // sum the lane groups (each holds the same columns of other positions)
    for (int m = lanes; m < 32; m <<= 1) {
#pragma unroll
      for (int v = 0; v < V; ++v) acc[v] += __shfl_xor_sync(kFullMask, acc[v], m);
    }
    const acc_t scale = s.mean ? acc_t(1) / static_cast<acc_t>(kept > 0 ? kept : 1) : acc_t(1);
    if (group == 0 && col_ok) {
#pragma unroll
      for (int v = 0; v < V; ++v) store(c0 + v, acc[v] * scale);
    }
  }
}

// pool_row with 16-byte loads when the side allows them, else element loads.
template <typename scalar_t, typename Store>
__device__ __forceinline__ void pool_row_any(const SideParams& s, int64_t b, int lane, Store store) {
  if (s.vec_ok) {
    pool_row<scalar_t, vec_width<scalar_t>()>(s, b, lane, store);
  } else {
    pool_row<scalar_t, 1>(s, b, lane, store);
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Blocks of 256 threads everywhere; grid-stride loops cover work past 2^20 blocks.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

inline int grid_for(int64_t work_items, int64_t per_block) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(work_items, per_block), 1 << 20)));
}

// Sums by row in a fixed order (the sorted table gradient of fused_input_backward.cu, and
// table_update.cu): each position's sort key is the row it names, or `rows` (after every row)
// for a padding position and for an id outside [0, rows), which is recorded in err when given
// (id_check.cuh's record) and never read or written by the kernels that walk the keys.  A stable
// sort of the keys (at::sort) then puts each row's positions together, in position order.  The
// launch stays in the .cu files (the emulator rewrites launches there only).
template <typename index_t>
__global__ void __launch_bounds__(kThreads) position_keys_kernel(const index_t* ids, int64_t positions, int64_t rows,
                                                                 bool has_pad, int64_t pad, int64_t* err,
                                                                 int64_t* keys) {
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; p < positions;
       p += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t id = static_cast<int64_t>(ids[p]);
    int64_t key = id;
    if (has_pad && id == pad) {
      key = rows;
    } else if (id < 0 || id >= rows) {
      report_bad_id(err, id);
      key = rows;
    }
    keys[p] = key;
  }
}

inline std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

}  // namespace cuda
}  // namespace neumf_fast
