// CUDA backward of neumf_fast::fused_input.
//
// Math (the adjoint of fused_input_forward.cu):
//   d_proj_user = [d_gmf * mf_item | d_mlp_in[:, :H_mlp_user]],  d_proj_item likewise with mf_user
//   d_pooled    = d_proj @ W            (d_proj itself with no weight)
//   d_W = d_proj^T @ pooled,  d_b = sum_b d_proj
//   dense user:  d_x[b, l] = keep[b, l] * scale[b] * d_pooled_user[b]   (broadcast over L)
//   id user:     d_table[ids[b, l]] += scale[b] * d_pooled_user[b] for every kept position
//   item:        d_item = d_pooled_item, or its rows scattered into d_item_table
//
// Kernels.  One elementwise pass forms both d_proj (op-math) from the output gradients and the
// saved MF halves.  The GEMMs (d_pooled, d_W) and the column sum d_b run on cuBLAS through ATen
// (ops.cpp: projection_backward): reductions over the rows that never serialise on atomics.
// The memory-bound parts are ours: the dense broadcast (one block per batch row, 16-byte
// stores) and the table scatter.  For fp32/fp64 tables the scatter adds with fence-free atomics
// (one warp per position, float4 vector atomics on sm_90); under
// torch.use_deterministic_algorithms(True), and for bf16/fp16 tables, the positions are stably
// sorted by id and summed in a fixed order in two passes (segment_partial_kernel), so every bit
// of the result is reproducible and a popular id is summed by many warps.
// Ids were checked by the forward; an id outside the table is skipped here, never written, and
// the forward's record of it is raised here if its read-back has landed (id_check.cuh).
#include "../ops.h"
#include "common.cuh"
#include "id_check.cuh"

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

namespace neumf_fast {
namespace cuda {
namespace {

using at::Tensor;

// d_proj of both sides from the saved MF halves mf_user / mf_item [B, h_mf].  One block per
// batch row (grid-stride), threads over the row's H_user + H_item columns.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) dproj_kernel(const scalar_t* grad_gmf, const scalar_t* grad_mlp,
                                                         const acc_type<scalar_t>* mf_user,
                                                         const acc_type<scalar_t>* mf_item,
                                                         acc_type<scalar_t>* dproj_user,
                                                         acc_type<scalar_t>* dproj_item, int64_t batch, int64_t hm,
                                                         int64_t h_user, int64_t h_item) {
  using acc_t = acc_type<scalar_t>;
  const int64_t mlp_width = (h_user - hm) + (h_item - hm);
  for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
    for (int64_t j = threadIdx.x; j < h_user + h_item; j += kThreads) {
      if (j < h_user) {
        dproj_user[b * h_user + j] = j < hm ? static_cast<acc_t>(grad_gmf[b * hm + j]) * mf_item[b * hm + j]
                                            : static_cast<acc_t>(grad_mlp[b * mlp_width + (j - hm)]);
      } else {
        const int64_t k = j - h_user;
        dproj_item[b * h_item + k] = k < hm ? static_cast<acc_t>(grad_gmf[b * hm + k]) * mf_user[b * hm + k]
                                            : static_cast<acc_t>(grad_mlp[b * mlp_width + (h_user - hm) + (k - hm)]);
      }
    }
  }
}

// scale[b] = 1 / max(1, kept positions of row b), for mean pooling.  One warp per row.
template <typename acc_t>
__global__ void mean_scale_kernel(const SideParams s, int64_t batch, acc_t* scale) {
  const int lane = threadIdx.x % 32;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; b < batch;
       b += static_cast<int64_t>(gridDim.x) * kWarps) {
    int kept = 0;
    for (int64_t l0 = 0; l0 < s.L; l0 += 32) {
      const int64_t l = l0 + lane, p = b * s.L + l;
      bool keep = false;
      if (l < s.L) {
        keep = s.ids != nullptr ? !(s.has_pad && load_id(s.ids, s.ids64, p) == s.pad)
                                : (s.mask == nullptr || s.mask[p]);
      }
      kept += __popc(__ballot_sync(kFullMask, keep));
    }
    if (lane == 0) scale[b] = acc_t(1) / static_cast<acc_t>(kept > 0 ? kept : 1);
  }
}

// d_x[b, l, :] = keep[b, l] * scale[b] * d_pooled[b, :]: one block per row b (grid-stride),
// V-wide stores across the row's L * D elements.
template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads) broadcast_kernel(const acc_type<scalar_t>* dpooled,
                                                             const acc_type<scalar_t>* scale, const bool* mask,
                                                             scalar_t* grad_x, int64_t batch, int64_t L, int64_t D) {
  using acc_t = acc_type<scalar_t>;
  const int dv = static_cast<int>(D / V);
  const int per_row = static_cast<int>(L) * dv;
  for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
    const acc_t s = scale != nullptr ? scale[b] : acc_t(1);
    for (int e = threadIdx.x; e < per_row; e += kThreads) {
      const int l = e / dv, c = (e - l * dv) * V;
      const int64_t p = b * L + l;
      const bool keep = mask == nullptr || mask[p];
      VecOf<scalar_t, V> out;
#pragma unroll
      for (int v = 0; v < V; ++v) out.v[v] = static_cast<scalar_t>(keep ? s * dpooled[b * D + c + v] : acc_t(0));
      NEUMF_CHECK_ALIGNED(grad_x + p * D + c, sizeof(out));
      *reinterpret_cast<VecOf<scalar_t, V>*>(grad_x + p * D + c) = out;
    }
  }
}

// dst[0..V) += v[0..V) atomically, with no fence (the result is unused, so it compiles to
// `red`): one vector atomic where the hardware has one (fp32 on sm_90: float4 atomicAdd, a single
// red.global.add.v4.f32), else V scalar ones.  The emulator (tests/cuda_emu) takes the vector
// path, as the sm_90 build does.
template <typename acc_t, int V>
__device__ __forceinline__ void atomic_add_vec(acc_t* dst, const acc_t (&v)[V]) {
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900) || defined(NEUMF_CUDA_EMULATOR)
  constexpr bool kVector = std::is_same_v<acc_t, float> && V == 4;
#else
  constexpr bool kVector = false;
#endif
  if constexpr (kVector) {
    NEUMF_CHECK_ALIGNED(dst, 16);
    atomicAdd(reinterpret_cast<float4*>(dst), make_float4(v[0], v[1], v[2], v[3]));
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) atomicAdd(dst + i, v[i]);
  }
}

// grad_table[ids[p], :] += scale[b] * d_pooled[b, :] by atomics, for every position p = b * L + l:
// one warp per position across the whole grid (so the item side, L = 1, keeps every warp busy),
// its id read once, lanes over the columns V at a time (coalesced, 16-byte where V = 4).
template <typename acc_t, int V>
__global__ void __launch_bounds__(kThreads) scatter_atomic_kernel(const SideParams s, int64_t batch,
                                                                  const acc_t* dpooled, const acc_t* scale,
                                                                  acc_t* grad_table) {
  const int64_t L = s.L, D = s.D, positions = batch * L;
  const int lane = threadIdx.x % 32;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; p < positions;
       p += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t id = load_id(s.ids, s.ids64, p);
    if ((s.has_pad && id == s.pad) || id < 0 || id >= s.rows) continue;  // warp-uniform
    const int64_t b = p / L;
    const acc_t sc = scale != nullptr ? scale[b] : acc_t(1);
    const acc_t* src = dpooled + b * D;
    acc_t* dst = grad_table + id * D;
    for (int64_t c = static_cast<int64_t>(lane) * V; c < D; c += 32 * V) {
      acc_t v[V];
      if constexpr (V > 1) {
        NEUMF_CHECK_ALIGNED(src + c, sizeof(VecOf<acc_t, V>));
        const auto x = *reinterpret_cast<const VecOf<acc_t, V>*>(src + c);
#pragma unroll
        for (int i = 0; i < V; ++i) v[i] = sc * x.v[i];
      } else {
        v[0] = sc * src[c];
      }
      atomic_add_vec<acc_t, V>(dst + c, v);
    }
  }
}

// Deterministic scatter: positions stably sorted by id (invalid and padding positions carry
// the key `rows` and sort last), cut into chunks of kChunk positions, two passes:
//   1. one warp per chunk sums each run of equal ids within its chunk in position order.  A run
//      that lies inside the chunk is written to its row; the run's part at the chunk's start
//      (continuing from the previous chunk) goes to head[chunk], its part at the end
//      (continuing into the next) to tail[chunk] (a chunk that is one run: head only);
//   2. for each run that starts in a chunk and continues past it, one warp adds its tail and
//      the heads of the chunks it covers, in order, and writes the row.
// Every sum has a fixed order, so every bit of the result is reproducible, and a popular id is
// summed kChunk positions per warp in parallel, its chunks combined by one warp: its length
// divided by kChunk steps, not its length.  Rows no position names stay zero.
constexpr int64_t kChunk = 128;

struct ChunkRange {
  int64_t start, end;
};

__device__ __forceinline__ ChunkRange chunk_range(int64_t k, int64_t positions) {
  return {k * kChunk, (k + 1) * kChunk < positions ? (k + 1) * kChunk : positions};
}

template <typename acc_t>
__device__ __forceinline__ acc_t position_value(const int64_t* order, int64_t j, int64_t L, int64_t D, int64_t c,
                                                const acc_t* dpooled, const acc_t* scale) {
  const int64_t b = order[j] / L;
  return (scale != nullptr ? scale[b] : acc_t(1)) * dpooled[b * D + c];
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) segment_partial_kernel(
    const int64_t* sorted_ids, const int64_t* order, int64_t positions, int64_t L, int64_t rows, int64_t D,
    const acc_type<scalar_t>* dpooled, const acc_type<scalar_t>* scale, scalar_t* grad_table,
    acc_type<scalar_t>* head, acc_type<scalar_t>* tail) {
  using acc_t = acc_type<scalar_t>;
  const int lane = threadIdx.x % 32;
  const int64_t chunks = (positions + kChunk - 1) / kChunk;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; k < chunks;
       k += static_cast<int64_t>(gridDim.x) * kWarps) {
    const ChunkRange r = chunk_range(k, positions);
    for (int64_t c = lane; c < D; c += 32) {
      for (int64_t i = r.start; i < r.end;) {
        const int64_t key = sorted_ids[i];
        acc_t acc(0);
        int64_t j = i;
        for (; j < r.end && sorted_ids[j] == key; ++j) acc += position_value(order, j, L, D, c, dpooled, scale);
        if (key >= 0 && key < rows) {
          const bool from_before = i == r.start && r.start > 0 && sorted_ids[r.start - 1] == key;
          const bool goes_on = j == r.end && r.end < positions && sorted_ids[r.end] == key;
          if (from_before) {
            head[k * D + c] = acc;
          } else if (goes_on) {
            tail[k * D + c] = acc;
          } else {
            grad_table[key * D + c] = static_cast<scalar_t>(acc);
          }
        }
        i = j;
      }
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) segment_combine_kernel(const int64_t* sorted_ids, int64_t positions,
                                                                   int64_t rows, int64_t D,
                                                                   const acc_type<scalar_t>* head,
                                                                   const acc_type<scalar_t>* tail,
                                                                   scalar_t* grad_table) {
  using acc_t = acc_type<scalar_t>;
  const int lane = threadIdx.x % 32;
  const int64_t chunks = (positions + kChunk - 1) / kChunk;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; k < chunks;
       k += static_cast<int64_t>(gridDim.x) * kWarps) {
    const ChunkRange r = chunk_range(k, positions);
    const int64_t key = sorted_ids[r.end - 1];
    // the chunk's last run starts in this chunk and continues into the next (warp-uniform)
    if (key < 0 || key >= rows || r.end >= positions || sorted_ids[r.end] != key) continue;
    if (r.start > 0 && sorted_ids[r.start - 1] == key) continue;  // it started before: not ours
    for (int64_t c = lane; c < D; c += 32) {
      acc_t acc = tail[k * D + c];
      for (int64_t m = k + 1; m < chunks; ++m) {
        acc += head[m * D + c];
        const ChunkRange rm = chunk_range(m, positions);
        if (rm.end >= positions || sorted_ids[rm.end] != key) break;  // the run ends in chunk m
      }
      grad_table[key * D + c] = static_cast<scalar_t>(acc);
    }
  }
}

// The gradient of an id side's table from d_pooled [B, D] (op-math).
template <typename scalar_t>
Tensor table_grad(const SideParams& s, const Tensor& ids, int64_t batch, const Tensor& dpooled, const Tensor& scale,
                  cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  const auto dtype = c10::CppTypeToScalarType<scalar_t>::value;
  const acc_t* scale_ptr = scale.defined() ? scale.data_ptr<acc_t>() : nullptr;
  // Atomics for fp32/fp64 tables.  A bf16/fp16 table takes the sorted sum below even when
  // nondeterminism is allowed: atomics would need an fp32 table-sized buffer and a cast of it.
  if (!at::globalContext().deterministicAlgorithms() && dtype == dpooled.scalar_type()) {
    Tensor acc = at::zeros({s.rows, s.D}, dpooled.options());
    const int64_t positions = batch * s.L;
    if (positions > 0 && s.D > 0) {
      const int grid = grid_for(positions, kWarps);
      // 16-byte rows: the table is a fresh allocation, so D % 4 == 0 and an aligned dpooled align every row
      if (std::is_same_v<acc_t, float> && s.D % 4 == 0 && reinterpret_cast<uintptr_t>(dpooled.data_ptr()) % 16 == 0) {
        scatter_atomic_kernel<acc_t, 4><<<grid, kThreads, 0, stream>>>(s, batch, dpooled.data_ptr<acc_t>(), scale_ptr,
                                                                      acc.data_ptr<acc_t>());
      } else {
        scatter_atomic_kernel<acc_t, 1><<<grid, kThreads, 0, stream>>>(s, batch, dpooled.data_ptr<acc_t>(), scale_ptr,
                                                                      acc.data_ptr<acc_t>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return acc;
  }
  Tensor out = at::zeros({s.rows, s.D}, dpooled.options().dtype(dtype));
  const int64_t positions = ids.numel();
  if (positions == 0 || s.D == 0) return out;
  // ids were checked (and any bad one recorded) by the forward: no record here
  Tensor keys = at::empty({positions}, ids.options().dtype(at::kLong));
  if (ids.scalar_type() == at::kLong) {
    position_keys_kernel<int64_t><<<grid_for(positions, kThreads), kThreads, 0, stream>>>(
        ids.data_ptr<int64_t>(), positions, s.rows, s.has_pad, s.pad, nullptr, keys.data_ptr<int64_t>());
  } else {
    position_keys_kernel<int32_t><<<grid_for(positions, kThreads), kThreads, 0, stream>>>(
        ids.data_ptr<int32_t>(), positions, s.rows, s.has_pad, s.pad, nullptr, keys.data_ptr<int64_t>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto [sorted_ids, order] = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const int64_t chunks = ceil_div(positions, kChunk);
  // partial sums of the runs that cross a chunk boundary; pass 1 writes every one pass 2 reads
  const Tensor head = at::empty({chunks, s.D}, dpooled.options()), tail = at::empty({chunks, s.D}, dpooled.options());
  const int grid = grid_for(chunks, kWarps);
  segment_partial_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
      sorted_ids.data_ptr<int64_t>(), order.data_ptr<int64_t>(), positions, s.L, s.rows, s.D,
      dpooled.data_ptr<acc_t>(), scale_ptr, out.data_ptr<scalar_t>(), head.data_ptr<acc_t>(), tail.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  segment_combine_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(sorted_ids.data_ptr<int64_t>(), positions, s.rows,
                                                                  s.D, head.data_ptr<acc_t>(), tail.data_ptr<acc_t>(),
                                                                  out.data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> fused_input_backward_cuda(
    const Tensor& grad_gmf_in, const Tensor& grad_mlp_in_in, const Tensor& user_in,
    const std::optional<Tensor>& mask_in, const std::optional<Tensor>& user_table,
    std::optional<int64_t> padding_idx, const Tensor& item_in, const std::optional<Tensor>& item_table,
    const std::optional<Tensor>& user_weight, const std::optional<Tensor>& user_bias,
    const std::optional<Tensor>& item_weight, const std::optional<Tensor>& item_bias, int64_t h_mf,
    c10::string_view mode, const Tensor& pooled_user_in, const Tensor& pooled_item_in, const Tensor& mf_user_in,
    const Tensor& mf_item_in, std::array<bool, 6> output_mask) {
  const FusedDims d = check_fused_input(user_in, mask_in, user_table, padding_idx, item_in, item_table,
                                        user_weight, user_bias, item_weight, item_bias, h_mf, mode);
  const auto dtype = float_dtype(user_in, user_table);
  check_fused_backward(d, dtype, grad_gmf_in, grad_mlp_in_in, pooled_user_in, pooled_item_in, mf_user_in,
                       mf_item_in, user_weight.has_value(), item_weight.has_value());
  TORCH_CHECK(user_in.is_cuda() && mf_user_in.device() == user_in.device(), "neumf_fast: the CUDA backward got "
              "user on ", user_in.device(), " and the saved tensors on ", mf_user_in.device());
  const c10::cuda::CUDAGuard guard(user_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // a bad id of this step's forward, if its read-back has landed (no wait: see id_check.cuh)
  raise_pending(device_state(user_in), stream, /*wait=*/false);
  const Tensor user = user_in.contiguous(), item = item_in.contiguous();
  const Tensor grad_gmf = grad_gmf_in.contiguous(), grad_mlp = grad_mlp_in_in.contiguous();
  const Tensor pooled_user = pooled_user_in.contiguous(), pooled_item = pooled_item_in.contiguous();
  const Tensor mf_user = mf_user_in.contiguous(), mf_item = mf_item_in.contiguous();  // [B, h_mf]
  const auto mask = contiguous(mask_in);
  // named flags, not a structured binding: lambdas below capture them (C++20 only for bindings)
  const bool want_user_src = output_mask[0], want_item_src = output_mask[1], want_user_w = output_mask[2],
             want_user_b = output_mask[3], want_item_w = output_mask[4], want_item_b = output_mask[5];
  const int64_t B = d.batch;
  const auto acc_opts = user.options().dtype(at::toOpMathType(dtype));
  const auto out_opts = user.options().dtype(dtype);
  auto none = [&] { return at::empty({0}, out_opts); };

  Tensor dproj_user = at::empty({B, d.user_proj}, acc_opts), dproj_item = at::empty({B, d.item_proj}, acc_opts);
  Tensor scale;  // per-row mean scale (op-math), undefined for sum pooling
  Tensor grad_user_src = none(), grad_item_src = none();
  Tensor grad_user_w = none(), grad_user_b = none(), grad_item_w = none(), grad_item_b = none();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "neumf_fast.fused_input_backward_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    if (B > 0 && d.user_proj + d.item_proj > 0) {
      dproj_kernel<scalar_t><<<grid_for(B, 1), kThreads, 0, stream>>>(
          grad_gmf.data_ptr<scalar_t>(), grad_mlp.data_ptr<scalar_t>(), mf_user.data_ptr<acc_t>(),
          mf_item.data_ptr<acc_t>(), dproj_user.data_ptr<acc_t>(), dproj_item.data_ptr<acc_t>(), B, d.h_mf,
          d.user_proj, d.item_proj);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    Tensor dpooled_user, dpooled_item;
    std::tie(dpooled_user, grad_user_w, grad_user_b) = projection_backward(
        dproj_user, pooled_user, user_weight, want_user_src, want_user_w, want_user_b && user_bias.has_value(), dtype);
    std::tie(dpooled_item, grad_item_w, grad_item_b) = projection_backward(
        dproj_item, pooled_item, item_weight, want_item_src, want_item_w, want_item_b && item_bias.has_value(), dtype);

    SideParams us;  // the user side as the scatter and scale kernels read it
    us.L = d.seq_len;
    us.D = d.user_dim;
    us.mask = mask ? mask->data_ptr<bool>() : nullptr;
    if (d.user_ids) {
      us.ids = user.data_ptr();
      us.ids64 = user.scalar_type() == at::kLong;
      us.rows = user_table->size(0);
      us.has_pad = padding_idx.has_value();
      us.pad = padding_idx.value_or(0);
    }
    if (want_user_src) {
      const Tensor dp = dpooled_user.contiguous();
      if (d.mean && B > 0) {
        scale = at::empty({B}, acc_opts);
        mean_scale_kernel<acc_t><<<grid_for(B, kWarps), kThreads, 0, stream>>>(us, B, scale.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (d.user_ids) {
        grad_user_src = table_grad<scalar_t>(us, user, B, dp, scale, stream);
      } else {
        grad_user_src = at::empty({B, d.seq_len, d.user_dim}, out_opts);
        if (grad_user_src.numel() > 0) {
          const acc_t* sp = scale.defined() ? scale.data_ptr<acc_t>() : nullptr;
          constexpr int vec = vec_width<scalar_t>();
          const int grid = grid_for(B, 1);
          if (d.user_dim % vec == 0) {
            broadcast_kernel<scalar_t, vec><<<grid, kThreads, 0, stream>>>(
                dp.data_ptr<acc_t>(), sp, us.mask, grad_user_src.data_ptr<scalar_t>(), B, d.seq_len, d.user_dim);
          } else {
            broadcast_kernel<scalar_t, 1><<<grid, kThreads, 0, stream>>>(
                dp.data_ptr<acc_t>(), sp, us.mask, grad_user_src.data_ptr<scalar_t>(), B, d.seq_len, d.user_dim);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      }
    }
    if (want_item_src) {
      if (d.item_ids) {
        SideParams is;
        is.L = 1;
        is.D = d.item_dim;
        is.ids = item.data_ptr();
        is.ids64 = item.scalar_type() == at::kLong;
        is.rows = item_table->size(0);
        grad_item_src = table_grad<scalar_t>(is, item, B, dpooled_item.contiguous(), Tensor(), stream);
      } else {
        grad_item_src = dpooled_item.to(dtype);  // dpooled_item is ours: no output aliases an input
      }
    }
  });
  return {grad_user_src, grad_item_src, grad_user_w, grad_user_b, grad_item_w, grad_item_b};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(neumf_fast, CUDA, m) { m.impl("fused_input_backward", &cuda::fused_input_backward_cuda); }

}  // namespace neumf_fast
