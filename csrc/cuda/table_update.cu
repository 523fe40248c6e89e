// CUDA kernel of neumf_fast::table_update_: one row-wise optimizer step, in place.
//
// Math (neumf_fast/reference.py: table_update_ is the spec): each position ids[m, k] other than
// padding_idx gives its row grad[m]; each row present is updated once, from the sum of its
// positions' gradients plus weight_decay * row, in op-math (fp32 for bf16/fp16, fp64 for fp64):
//   sgd:             row -= lr * g
//   adam:            m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2,
//                    row -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//   rowwise_adagrad: s += mean(g^2) (one accumulator per row),  row -= lr * g / (sqrt(s) + eps)
// `step` is advanced on the device first (advance_step_kernel, which also forms Adam's bias
// corrections for the new count t): nothing is read back on the host and the grids depend only on
// shapes, so the op can be captured in a CUDA graph.
//
// Work.  One kernel writes each position's sort key (common.cuh: position_keys_kernel, shared
// with the backward's sorted table gradient): its id, or `rows` for padding and for an id outside
// the table, which is recorded for the host as the fused op records one (id_check.cuh, the user
// slot) and never read or written.  A stable sort puts each row's positions together in position
// order.  update_rows_kernel then runs one warp per sorted position; the warp whose position
// starts a run (a row's first position) owns that row: it sums the run's gradient rows, lanes over
// D (128 columns a pass, 4 per lane), the run's positions read 32 at a time and passed by shuffle,
// and applies the step to the row and its state; rowwise_adagrad first reduces sum(g^2) over the
// warp (a row wider than 128 columns is summed twice, in the same order).
//
// Determinism: every row is summed by one warp in sorted order, which the stable sort makes
// position order, and the reduction of g^2 has a fixed shape, so every bit of the result is
// reproducible.  No atomics or fences (only the bad-id record's flag), nothing of the table's size
// is allocated: O(M K) for the keys and the sort, O(M K D) for the sums.  All offsets are int64.
#include "../ops.h"
#include "common.cuh"
#include "id_check.cuh"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdio>
#include <tuple>
#include <type_traits>

namespace neumf_fast {
namespace cuda {
namespace {

using at::Tensor;

constexpr int kCols = 4;                   // columns of a row per lane per pass
constexpr int64_t kPassCols = 32 * kCols;  // columns of a row per warp per pass

template <typename scalar_t>
struct UpdateParams {
  using acc_t = acc_type<scalar_t>;
  scalar_t* table = nullptr;                // [rows, dim]
  acc_t* moment1 = nullptr;                 // adam: [rows, dim]
  acc_t* moment2 = nullptr;                 // adam: [rows, dim]; rowwise_adagrad: [rows]
  const scalar_t* grad = nullptr;           // [groups, dim]
  const int64_t* sorted = nullptr;          // [positions] the keys, sorted
  const int64_t* order = nullptr;           // [positions] the position of each sorted key
  const double* bias_correction = nullptr;  // adam: {lr / (1 - b1^t), sqrt(1 - b2^t)}
  int64_t positions = 0, rows = 0, dim = 0, per_group = 1;
  double inv_per_group = 1;                 // 1 / per_group, for group_of
  acc_t lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0;
};

template <typename acc_t>
__device__ __forceinline__ acc_t op_sqrt(acc_t x) {
  if constexpr (std::is_same_v<acc_t, float>) {
    return sqrtf(x);
  } else {
    return sqrt(x);
  }
}

// position / per_group for 0 <= position < 2^52, without a 64-bit integer division (a call to a
// subroutine whose register saves spill in update_rows_kernel): the quotient estimated from the
// reciprocal is off by at most one, and corrected.
__device__ __forceinline__ int64_t group_of(int64_t position, int64_t per_group, double inv_per_group) {
  int64_t group = static_cast<int64_t>(static_cast<double>(position) * inv_per_group);
  const int64_t rest = position - group * per_group;
  if (rest < 0) --group;
  if (rest >= per_group) ++group;
  return group;
}

// step += 1, then Adam's bias corrections for the new count t, in double (as the CPU kernel).
__global__ void advance_step_kernel(int64_t* step, double lr, double beta1, double beta2, double* bias_correction) {
  const int64_t t = *step + 1;
  *step = t;
  bias_correction[0] = lr / (1 - pow(beta1, static_cast<double>(t)));
  bias_correction[1] = sqrt(1 - pow(beta2, static_cast<double>(t)));
}

// While a CUDA graph is captured nothing is read back: stop at a bad id on the device instead.
__global__ void trap_on_bad_id_kernel(const int64_t* err) {
  if (err[0] != 0) {
    printf("neumf_fast: a table_update id is out of range for its table (found while capturing a CUDA graph)\n");
    __trap();
  }
}

// Columns c0 + 32 i + lane (i < kCols) of one row: g = the run's summed gradient + weight_decay *
// row, and w = the row, in op-math (zero past the row's end).  The run is the sorted positions
// from `start` on whose key is `row`; they are read 32 at a time, one per lane (the run's lanes
// are a prefix: the keys are sorted), and each gradient row's offset is passed by shuffle.  Each
// column is summed from zero in sorted order.
template <typename scalar_t>
__device__ __forceinline__ void run_gradient(const UpdateParams<scalar_t>& p, int64_t start, int64_t row, int64_t c0,
                                             int lane, acc_type<scalar_t> (&g)[kCols],
                                             acc_type<scalar_t> (&w)[kCols]) {
  using acc_t = acc_type<scalar_t>;
#pragma unroll
  for (int i = 0; i < kCols; ++i) g[i] = acc_t(0);
  for (int64_t q0 = start;; q0 += 32) {
    const int64_t q = q0 + lane;
    const bool in_run = q < p.positions && p.sorted[q] == row;
    const int64_t src = in_run ? group_of(p.order[q], p.per_group, p.inv_per_group) * p.dim : 0;
    const int count = __popc(__ballot_sync(kFullMask, in_run));
#pragma unroll 2
    for (int j = 0; j < count; ++j) {
      const int64_t off = __shfl_sync(kFullMask, static_cast<long long>(src), j);
#pragma unroll
      for (int i = 0; i < kCols; ++i) {
        const int64_t c = c0 + 32 * i + lane;
        if (c < p.dim) g[i] += static_cast<acc_t>(p.grad[off + c]);
      }
    }
    if (count < 32) break;
  }
  const scalar_t* w_row = p.table + row * p.dim;
#pragma unroll
  for (int i = 0; i < kCols; ++i) {
    const int64_t c = c0 + 32 * i + lane;
    w[i] = c < p.dim ? static_cast<acc_t>(w_row[c]) : acc_t(0);
    g[i] += p.weight_decay * w[i];
  }
}

// One warp per sorted position, grid-stride; the warp of a run's first position updates its row.
template <typename scalar_t, TableOptimizer kOpt>
__global__ void __launch_bounds__(kThreads) update_rows_kernel(const UpdateParams<scalar_t> p) {
  using acc_t = acc_type<scalar_t>;
  const int lane = threadIdx.x % 32;
  [[maybe_unused]] acc_t step_size(0), bc2_sqrt(1);
  if constexpr (kOpt == TableOptimizer::kAdam) {
    step_size = static_cast<acc_t>(p.bias_correction[0]);
    bc2_sqrt = static_cast<acc_t>(p.bias_correction[1]);
  }
  for (int64_t pos = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; pos < p.positions;
       pos += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t row = p.sorted[pos];
    // padding and bad ids (key `rows`), and positions inside a run: nothing to do (warp-uniform)
    if (row >= p.rows || (pos > 0 && p.sorted[pos - 1] == row)) continue;
    scalar_t* const w_row = p.table + row * p.dim;
    acc_t g[kCols], w[kCols];
    [[maybe_unused]] acc_t rate = p.lr;
    if constexpr (kOpt == TableOptimizer::kRowwiseAdagrad) {
      acc_t sq(0);
      for (int64_t c0 = 0; c0 < p.dim; c0 += kPassCols) {
        run_gradient(p, pos, row, c0, lane, g, w);
#pragma unroll
        for (int i = 0; i < kCols; ++i) sq += g[i] * g[i];
      }
      for (int m = 16; m > 0; m >>= 1) sq += __shfl_xor_sync(kFullMask, sq, m);
      acc_t s(0);
      if (lane == 0) {  // the one lane that reads and writes the row's accumulator
        s = p.moment2[row] + sq / static_cast<acc_t>(p.dim);
        p.moment2[row] = s;
      }
      s = __shfl_sync(kFullMask, s, 0);
      rate = p.lr / (op_sqrt(s) + p.eps);
    }
    for (int64_t c0 = 0; c0 < p.dim; c0 += kPassCols) {
      // rowwise_adagrad on a row of one pass kept its gradient from the sum above
      if (kOpt != TableOptimizer::kRowwiseAdagrad || p.dim > kPassCols) run_gradient(p, pos, row, c0, lane, g, w);
#pragma unroll
      for (int i = 0; i < kCols; ++i) {
        const int64_t c = c0 + 32 * i + lane;
        if (c >= p.dim) continue;
        if constexpr (kOpt == TableOptimizer::kAdam) {
          const int64_t e = row * p.dim + c;
          const acc_t m = p.beta1 * p.moment1[e] + (acc_t(1) - p.beta1) * g[i];
          const acc_t v = p.beta2 * p.moment2[e] + (acc_t(1) - p.beta2) * g[i] * g[i];
          p.moment1[e] = m;
          p.moment2[e] = v;
          w_row[c] = static_cast<scalar_t>(w[i] - step_size * m / (op_sqrt(v) / bc2_sqrt + p.eps));
        } else {
          w_row[c] = static_cast<scalar_t>(w[i] - rate * g[i]);  // sgd: rate = lr
        }
      }
    }
  }
}

template <typename scalar_t, TableOptimizer kOpt>
void launch_update(const UpdateParams<scalar_t>& p, cudaStream_t stream) {
  update_rows_kernel<scalar_t, kOpt><<<grid_for(p.positions, kWarps), kThreads, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void table_update_cuda(const Tensor& table, const Tensor& moment1, const Tensor& moment2, const Tensor& step,
                       const Tensor& ids_in, const Tensor& grad_in, std::optional<int64_t> padding_idx,
                       c10::string_view optimizer, double lr, double beta1, double beta2, double eps,
                       double weight_decay) {
  const TableUpdateDims d = check_table_update(table, moment1, moment2, step, ids_in, grad_in, optimizer, lr, beta1,
                                               beta2, eps, weight_decay);
  TORCH_CHECK(table.is_cuda(), "neumf_fast: the CUDA kernel got table on ", table.device());
  const c10::cuda::CUDAGuard guard(table.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  DeviceState& state = device_state(table);
  // a bad id of an earlier call, if its read-back has landed: no wait (this runs inside a backward)
  raise_pending(state, stream, /*wait=*/false);
  const Tensor ids = ids_in.contiguous(), grad = grad_in.contiguous();
  const Tensor bias_correction = at::empty({2}, table.options().dtype(at::kDouble));
  advance_step_kernel<<<1, 1, 0, stream>>>(step.data_ptr<int64_t>(), lr, beta1, beta2,
                                           bias_correction.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t positions = ids.numel();
  if (positions == 0 || d.dim == 0) return;

  const IdCheckMode check = id_check_mode();
  int64_t* err = state.record->data_ptr<int64_t>();  // the user slot {found, id}
  const bool has_pad = padding_idx.has_value();
  const int64_t pad = padding_idx.value_or(0);
  Tensor keys = at::empty({positions}, ids.options().dtype(at::kLong));
  if (ids.scalar_type() == at::kLong) {
    position_keys_kernel<int64_t><<<grid_for(positions, kThreads), kThreads, 0, stream>>>(
        ids.data_ptr<int64_t>(), positions, d.rows, has_pad, pad, err, keys.data_ptr<int64_t>());
  } else {
    position_keys_kernel<int32_t><<<grid_for(positions, kThreads), kThreads, 0, stream>>>(
        ids.data_ptr<int32_t>(), positions, d.rows, has_pad, pad, err, keys.data_ptr<int64_t>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // named tensors, not a structured binding: the lambda below captures them (C++20 only for bindings)
  Tensor sorted, order;
  std::tie(sorted, order) = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, table.scalar_type(), "neumf_fast.table_update_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    UpdateParams<scalar_t> p;
    p.table = table.data_ptr<scalar_t>();
    p.moment1 = moment1.numel() > 0 ? moment1.data_ptr<acc_t>() : nullptr;
    p.moment2 = moment2.numel() > 0 ? moment2.data_ptr<acc_t>() : nullptr;
    p.grad = grad.data_ptr<scalar_t>();
    p.sorted = sorted.data_ptr<int64_t>();
    p.order = order.data_ptr<int64_t>();
    p.bias_correction = bias_correction.data_ptr<double>();
    p.positions = positions;
    p.rows = d.rows;
    p.dim = d.dim;
    p.per_group = d.per_group;
    p.inv_per_group = 1.0 / static_cast<double>(d.per_group);
    p.lr = static_cast<acc_t>(lr);
    p.beta1 = static_cast<acc_t>(beta1);
    p.beta2 = static_cast<acc_t>(beta2);
    p.eps = static_cast<acc_t>(eps);
    p.weight_decay = static_cast<acc_t>(weight_decay);
    switch (d.optimizer) {
      case TableOptimizer::kSgd:
        launch_update<scalar_t, TableOptimizer::kSgd>(p, stream);
        break;
      case TableOptimizer::kAdam:
        launch_update<scalar_t, TableOptimizer::kAdam>(p, stream);
        break;
      case TableOptimizer::kRowwiseAdagrad:
        launch_update<scalar_t, TableOptimizer::kRowwiseAdagrad>(p, stream);
        break;
    }
  });

  if (capturing()) {
    trap_on_bad_id_kernel<<<1, 1, 0, stream>>>(err);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    // the item slot's table size is left as it was: a fused forward's pending item record keeps its message
    after_launch(state, stream, check, d.rows, state.rows[1]);
  }
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(neumf_fast, CUDA, m) { m.impl("table_update_", &cuda::table_update_cuda); }

}  // namespace neumf_fast
