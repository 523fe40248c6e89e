// CUDA forward of neumf_fast::fused_input.
//
// Math (neumf_fast/reference.py is the spec):
//   pooled_user[b] = scale[b] * sum_l keep[b,l] * x[b,l,:]   (x dense, or user_table[ids[b,l]])
//   pooled_item[b] = item[b] or item_table[item_ids[b]]
//   proj_side      = pooled_side @ W_side^T + b_side          (the pooled rows with no weight)
//   gmf            = proj_user[:, :h_mf] * proj_item[:, :h_mf]
//   mlp_in         = cat(proj_user[:, h_mf:], proj_item[:, h_mf:])
//
// Tiling.  One block of 256 threads (8 warps) owns kRows = 32 rows of the batch.  For each side:
//   1. each warp pools 4 rows (common.cuh: ids and mask flags read once per row, 16-byte
//      loads, accumulation in fp32, or fp64 for double) into shared memory: as the GEMM's A
//      operand (rounded to bf16/fp16 for the tensor-core path) when the side has a weight,
//      else straight into the side's output tile;
//   2. the block multiplies the [32, D] tile by the stacked [H_mf + H_mlp, D] weight, 64 output
//      columns and 32 of D at a time, the weight tile staged in shared memory: WMMA tensor cores
//      (bf16/fp16, or TF32 for fp32 when torch.backends.cuda.matmul.allow_tf32 is set, as
//      cuBLAS and the Triton backend do), else FFMA with a 2x4 register tile per thread;
//   3. the bias is added to the [32, H] output tile in shared memory.
// The epilogue forms gmf and mlp_in from the two output tiles.  When the tiles do not fit in
// shared memory (very wide D or H), the same pooling runs as its own kernel into global memory,
// the projection is a cuBLAS GEMM (ops.cpp: project) and a small kernel forms the outputs.
//
// Saved for backward, only when `save` (op-math dtype), what the backward reads and nothing
// more: pooled_user, pooled_item for a side with a weight (empty without) and the MF halves
// mf_user, mf_item [B, h_mf] of the projections (of the pooled rows with no weight), written by
// the epilogue from the tiles it reads anyway.
//
// Ids are checked where they are read: an out-of-range id is never dereferenced and the kernel
// records it; the host raises IndexError at the next call (NEUMF_FAST_CHECK_IDS=deferred, the
// default: no wait for this call's kernels) or at this one (=sync).  While a CUDA graph is being
// captured the host cannot read anything back, so a one-thread kernel traps instead.  See
// id_check.cuh.  Nothing is allocated or queried per call beyond the outputs and the saves.
#include "../ops.h"
#include "common.cuh"
#include "id_check.cuh"

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <type_traits>

namespace neumf_fast {
namespace cuda {
namespace {

using at::Tensor;

constexpr int kRows = 32;   // rows of the batch per block
constexpr int kTileN = 64;  // output columns per GEMM step
constexpr int kTileK = 32;  // reduction (D) columns per staged weight tile
static_assert(kWarps == (kRows / 16) * (kTileN / 16), "one 16x16 WMMA output fragment per warp");
static_assert(kRows % kWarps == 0 && kThreads == 16 * (kRows / 2), "FFMA tile: 16 x 16 threads, 2 x 4 each");

// The element type of the staged GEMM operands: the bf16/fp16 storage type for tensor cores,
// fp32 for TF32, otherwise the op-math type (FFMA).
template <typename scalar_t>
struct MmaType {
  using type = scalar_t;
};
template <>
struct MmaType<c10::Half> {
  using type = __half;
};
template <>
struct MmaType<c10::BFloat16> {
  using type = __nv_bfloat16;
};
template <typename scalar_t, bool kMma>
using stage_type = std::conditional_t<kMma, typename MmaType<scalar_t>::type, acc_type<scalar_t>>;

template <typename stage_t>
struct Stage {  // float / double
  template <typename T>
  static __device__ __forceinline__ stage_t from(T v) {
    return static_cast<stage_t>(static_cast<acc_type<T>>(v));
  }
};
template <>
struct Stage<__half> {
  static __device__ __forceinline__ __half from(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ __half from(c10::Half v) {
    __half_raw r;
    r.x = v.x;
    return __half(r);
  }
};
template <>
struct Stage<__nv_bfloat16> {
  static __device__ __forceinline__ __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ __nv_bfloat16 from(c10::BFloat16 v) {
    __nv_bfloat16_raw r;
    r.x = v.x;
    return __nv_bfloat16(r);
  }
};

// Row strides (elements) of the shared-memory tiles.  WMMA needs a multiple of 16 bytes; the
// FFMA path uses an odd stride so that the 16 column threads hit 16 different banks.
template <typename stage_t, bool kMma>
constexpr int stage_pad() {
  return kMma ? 16 / static_cast<int>(sizeof(stage_t)) : 1;
}
template <typename stage_t, bool kMma>
constexpr int weight_ld() {
  return kTileK + stage_pad<stage_t, kMma>();
}

struct ForwardParams {
  SideParams user, item;
  void* gmf = nullptr;     // scalar_t [B, h_mf]
  void* mlp_in = nullptr;  // scalar_t [B, H_mlp_user + H_mlp_item]
  int64_t batch = 0, h_mf = 0;
  int lda = 0, ldo_user = 0, ldo_item = 0;  // shared-memory row strides (elements)
  int off_a = 0, off_user = 0, off_item = 0, off_w = 0;  // shared-memory byte offsets
};

// sW[n][k] = W[n0 + n][k0 + k], zero outside the weight (ragged H and D tiles).
template <typename scalar_t, typename stage_t, bool kMma>
__device__ __forceinline__ void stage_weight_tile(const scalar_t* W, int64_t H, int64_t D, int64_t n0, int64_t k0,
                                                  stage_t* sW) {
  constexpr int ld = weight_ld<stage_t, kMma>();
  for (int e = threadIdx.x; e < kTileN * kTileK; e += kThreads) {
    const int n = e / kTileK, k = e % kTileK;
    const int64_t gn = n0 + n, gk = k0 + k;
    sW[n * ld + k] = (gn < H && gk < D) ? Stage<stage_t>::from(W[gn * D + gk]) : Stage<stage_t>::from(0.0f);
  }
}

// sOut[:, n0:n0+64] = sA[:, :dk] @ W[n0:n0+64, :]^T for one 64-column step.
template <typename scalar_t, bool kMma>
__device__ __forceinline__ void project_step(const scalar_t* W, int64_t H, int64_t D, int64_t dk, int64_t n0,
                                             const stage_type<scalar_t, kMma>* sA, int lda,
                                             stage_type<scalar_t, kMma>* sW, acc_type<scalar_t>* sOut, int ldo) {
  using acc_t = acc_type<scalar_t>;
  using stage_t = stage_type<scalar_t, kMma>;
  constexpr int ld = weight_ld<stage_t, kMma>();
  if constexpr (kMma) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800  // the host pass (and the CPU emulator) see the WMMA code too
    using namespace nvcuda;
    constexpr bool kTf32 = std::is_same_v<stage_t, float>;
    constexpr int kK = kTf32 ? 8 : 16;
    using frag_t = std::conditional_t<kTf32, wmma::precision::tf32, stage_t>;
    const int warp = threadIdx.x / 32;
    const int fr = warp / (kTileN / 16), fc = warp % (kTileN / 16);
    wmma::fragment<wmma::accumulator, 16, 16, kK, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int64_t k0 = 0; k0 < dk; k0 += kTileK) {
      __syncthreads();  // the previous weight tile is no longer read
      stage_weight_tile<scalar_t, stage_t, kMma>(W, H, D, n0, k0, sW);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kTileK; kk += kK) {
        wmma::fragment<wmma::matrix_a, 16, 16, kK, frag_t, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, kK, frag_t, wmma::col_major> b;
        wmma::load_matrix_sync(a, sA + (16 * fr) * lda + k0 + kk, lda);
        wmma::load_matrix_sync(b, sW + (16 * fc) * ld + kk, ld);
        if constexpr (kTf32) {
#pragma unroll
          for (int t = 0; t < a.num_elements; ++t) a.x[t] = wmma::__float_to_tf32(a.x[t]);
#pragma unroll
          for (int t = 0; t < b.num_elements; ++t) b.x[t] = wmma::__float_to_tf32(b.x[t]);
        }
        wmma::mma_sync(acc, a, b, acc);
      }
    }
    // columns past H land in the tile's padding (ldo >= H rounded up to 64) and are never read
    wmma::store_matrix_sync(sOut + (16 * fr) * ldo + n0 + 16 * fc, acc, ldo, wmma::mem_row_major);
#else
    __trap();  // the host launches the WMMA path only on sm_80 and newer
#endif
  } else {
    // thread (tr, tc) owns rows tr and tr + 16, columns tc + 16 j (j < 4)
    const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
    acc_t c[2][4] = {};
    for (int64_t k0 = 0; k0 < dk; k0 += kTileK) {
      __syncthreads();
      stage_weight_tile<scalar_t, stage_t, kMma>(W, H, D, n0, k0, sW);
      __syncthreads();
#pragma unroll 8
      for (int k = 0; k < kTileK; ++k) {
        const acc_t a0 = sA[tr * lda + k0 + k];
        const acc_t a1 = sA[(tr + 16) * lda + k0 + k];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const acc_t w = sW[(tc + 16 * j) * ld + k];
          c[0][j] += a0 * w;
          c[1][j] += a1 * w;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t n = n0 + tc + 16 * j;
        if (n < H) sOut[(tr + 16 * i) * ldo + n] = c[i][j];
      }
    }
  }
}

// Pools the block's rows of one side and, with a weight, projects them: afterwards sOut[r][:H]
// holds proj_side (or the pooled row itself) for row row0 + r.
template <typename scalar_t, bool kMma>
__device__ __forceinline__ void side_forward(const SideParams& s, int64_t batch, int64_t row0,
                                             stage_type<scalar_t, kMma>* sA, int lda,
                                             stage_type<scalar_t, kMma>* sW, acc_type<scalar_t>* sOut, int ldo) {
  using acc_t = acc_type<scalar_t>;
  using stage_t = stage_type<scalar_t, kMma>;
  const bool proj = s.weight != nullptr;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t dk = (s.D + kTileK - 1) / kTileK * kTileK;
  acc_t* pooled_out = static_cast<acc_t*>(s.pooled_out);
  for (int r = warp; r < kRows; r += kWarps) {
    const int64_t b = row0 + r;
    if (b < batch) {
      pool_row_any<scalar_t>(s, b, lane, [&](int64_t c, acc_t v) {
        if (proj) {
          sA[r * lda + c] = Stage<stage_t>::from(v);
        } else {
          sOut[r * ldo + c] = v;
        }
        if (pooled_out != nullptr) pooled_out[b * s.D + c] = v;
      });
    } else {  // past the batch: zeros, whose results are never stored
      for (int64_t c = lane; c < s.D; c += 32) {
        if (proj) {
          sA[r * lda + c] = Stage<stage_t>::from(0.0f);
        } else {
          sOut[r * ldo + c] = acc_t(0);
        }
      }
    }
    if (proj) {
      for (int64_t c = s.D + lane; c < dk; c += 32) sA[r * lda + c] = Stage<stage_t>::from(0.0f);  // K padding
    }
  }
  __syncthreads();
  if (!proj) return;
  const scalar_t* W = static_cast<const scalar_t*>(s.weight);
  for (int64_t n0 = 0; n0 < s.H; n0 += kTileN) {
    project_step<scalar_t, kMma>(W, s.H, s.D, dk, n0, sA, lda, sW, sOut, ldo);
  }
  __syncthreads();
  if (s.bias != nullptr) {
    const scalar_t* bias = static_cast<const scalar_t*>(s.bias);
    const int H = static_cast<int>(s.H);
    for (int e = threadIdx.x; e < kRows * H; e += kThreads) {
      sOut[(e / H) * ldo + e % H] += static_cast<acc_t>(bias[e % H]);
    }
  }
  __syncthreads();  // sOut complete; sA and sW free for the next side
}

template <typename scalar_t, bool kMma>
__global__ void __launch_bounds__(kThreads, 2) fused_forward_kernel(const ForwardParams p) {
  using acc_t = acc_type<scalar_t>;
  using stage_t = stage_type<scalar_t, kMma>;
  extern __shared__ __align__(128) unsigned char smem[];
  stage_t* sA = reinterpret_cast<stage_t*>(smem + p.off_a);
  stage_t* sW = reinterpret_cast<stage_t*>(smem + p.off_w);
  acc_t* sU = reinterpret_cast<acc_t*>(smem + p.off_user);
  acc_t* sI = reinterpret_cast<acc_t*>(smem + p.off_item);
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  side_forward<scalar_t, kMma>(p.user, p.batch, row0, sA, p.lda, sW, sU, p.ldo_user);
  side_forward<scalar_t, kMma>(p.item, p.batch, row0, sA, p.lda, sW, sI, p.ldo_item);
  __syncthreads();

  // epilogue: gmf = mf_user * mf_item, mlp_in = [mlp_user | mlp_item], and the saved projections
  const int rows = static_cast<int>(p.batch - row0 < kRows ? p.batch - row0 : kRows);
  const int hm = static_cast<int>(p.h_mf), hu = static_cast<int>(p.user.H), hi = static_cast<int>(p.item.H);
  const int mlp_u = hu - hm, width = (hu - hm) + (hi - hm);
  scalar_t* gmf = static_cast<scalar_t*>(p.gmf);
  scalar_t* mlp = static_cast<scalar_t*>(p.mlp_in);
  acc_t* mf_user = static_cast<acc_t*>(p.user.mf_out);
  acc_t* mf_item = static_cast<acc_t*>(p.item.mf_out);
  for (int e = threadIdx.x; e < rows * hm; e += kThreads) {
    const int r = e / hm, j = e % hm;
    const acc_t u = sU[r * p.ldo_user + j], i = sI[r * p.ldo_item + j];
    gmf[(row0 + r) * hm + j] = static_cast<scalar_t>(u * i);
    if (mf_user != nullptr) mf_user[(row0 + r) * hm + j] = u;  // saved: what the backward reads
    if (mf_item != nullptr) mf_item[(row0 + r) * hm + j] = i;
  }
  for (int e = threadIdx.x; e < rows * width; e += kThreads) {
    const int r = e / width, j = e % width;
    const acc_t v = j < mlp_u ? sU[r * p.ldo_user + hm + j] : sI[r * p.ldo_item + hm + (j - mlp_u)];
    mlp[(row0 + r) * width + j] = static_cast<scalar_t>(v);
  }
}

// Fallback pooling (tiles too wide for shared memory): one warp per row, into pooled_out.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) pool_rows_kernel(const SideParams s, int64_t batch) {
  using acc_t = acc_type<scalar_t>;
  acc_t* out = static_cast<acc_t*>(s.pooled_out);
  const int lane = threadIdx.x % 32;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; b < batch;
       b += static_cast<int64_t>(gridDim.x) * kWarps) {
    pool_row_any<scalar_t>(s, b, lane, [&](int64_t c, acc_t v) { out[b * s.D + c] = v; });
  }
}

// Fallback epilogue: gmf and mlp_in from the [B, H] projections (row strides ldu, ldi).
template <typename scalar_t>
__global__ void epilogue_kernel(const acc_type<scalar_t>* proj_user, int64_t ldu, const acc_type<scalar_t>* proj_item,
                                int64_t ldi, scalar_t* gmf, scalar_t* mlp, int64_t batch, int64_t hm, int64_t mlp_u,
                                int64_t mlp_i) {
  const int64_t width = hm + mlp_u + mlp_i;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < batch * width;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = e / width, j = e % width;
    if (j < hm) {
      gmf[b * hm + j] = static_cast<scalar_t>(proj_user[b * ldu + j] * proj_item[b * ldi + j]);
    } else if (j < hm + mlp_u) {
      mlp[b * (mlp_u + mlp_i) + (j - hm)] = static_cast<scalar_t>(proj_user[b * ldu + j]);
    } else {
      mlp[b * (mlp_u + mlp_i) + (j - hm)] = static_cast<scalar_t>(proj_item[b * ldi + (j - mlp_u)]);
    }
  }
}

__global__ void trap_on_bad_ids_kernel(const int64_t* err) {
  if (err[0] != 0 || err[2] != 0) {
    printf("neumf_fast: an id is out of range for its table (found while capturing a CUDA graph)\n");
    __trap();
  }
}

int align128(int64_t bytes) { return static_cast<int>(round_up(bytes, 128)); }

// Launches the fused kernel if its tiles fit in shared memory; false if they do not.
template <typename scalar_t, bool kMma>
bool launch_fused(ForwardParams p, cudaStream_t stream, int device, int limit) {
  using acc_t = acc_type<scalar_t>;
  using stage_t = stage_type<scalar_t, kMma>;
  constexpr int pad = stage_pad<stage_t, kMma>();
  int64_t dk = 0;  // widest D that goes through the GEMM, padded to the K tile
  for (const SideParams* s : {&p.user, &p.item}) {
    if (s->weight != nullptr) dk = std::max(dk, round_up(s->D, kTileK));
  }
  const int64_t lda = dk > 0 ? dk + pad : 0;
  // WMMA stores whole 64-column steps; row strides stay multiples of 16 bytes
  const int64_t ldo_user = round_up(p.user.H, kTileN) + (kMma ? 4 : 1);
  const int64_t ldo_item = round_up(p.item.H, kTileN) + (kMma ? 4 : 1);
  const int64_t bytes_a = kRows * lda * static_cast<int64_t>(sizeof(stage_t));
  const int64_t bytes_w = dk > 0 ? kTileN * weight_ld<stage_t, kMma>() * static_cast<int64_t>(sizeof(stage_t)) : 0;
  const int64_t bytes_user = kRows * ldo_user * static_cast<int64_t>(sizeof(acc_t));
  const int64_t bytes_item = kRows * ldo_item * static_cast<int64_t>(sizeof(acc_t));
  const int64_t total = round_up(bytes_a, 128) + round_up(bytes_w, 128) + round_up(bytes_user, 128) +
                        round_up(bytes_item, 128);
  if (total > limit) return false;
  p.lda = static_cast<int>(lda);
  p.ldo_user = static_cast<int>(ldo_user);
  p.ldo_item = static_cast<int>(ldo_item);
  p.off_a = 0;
  p.off_w = align128(bytes_a);
  p.off_user = p.off_w + align128(bytes_w);
  p.off_item = p.off_user + align128(bytes_user);
  auto kernel = fused_forward_kernel<scalar_t, kMma>;
  // Raise the kernel's dynamic shared memory allowance once per device (a driver call, ~µs, that
  // serving-sized batches would otherwise pay every call).  Racing threads set it twice: harmless.
  static std::array<std::atomic<int>, 64> allowed{};
  const bool cached = device >= 0 && device < static_cast<int>(allowed.size());
  if (!cached || total > allowed[device].load(std::memory_order_relaxed)) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(total)));
    if (cached) allowed[device].store(static_cast<int>(total), std::memory_order_relaxed);
  }
  kernel<<<static_cast<unsigned>(ceil_div(p.batch, kRows)), kThreads, total, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

template <typename scalar_t>
bool use_tensor_cores(int major) {
  if (major < 8) return false;  // bf16 WMMA needs sm_80; fp16 and TF32 are kept to the same floor
  if constexpr (std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>) return true;
  if constexpr (std::is_same_v<scalar_t, float>) return at::globalContext().allowTF32CuBLAS();
  return false;
}

SideParams make_side(const FusedDims& d, bool is_user, const Tensor& x, const std::optional<Tensor>& mask,
                     const std::optional<Tensor>& table, const std::optional<int64_t>& padding_idx,
                     const std::optional<Tensor>& weight, const std::optional<Tensor>& bias, const Tensor& pooled,
                     const Tensor& mf, int64_t* err, int vec) {
  SideParams s;
  const bool ids = is_user ? d.user_ids : d.item_ids;
  s.src = ids ? table->data_ptr() : x.data_ptr();
  if (ids) {
    s.ids = x.data_ptr();
    s.ids64 = x.scalar_type() == at::kLong;
    s.rows = table->size(0);
    s.err = err;
  }
  if (is_user && mask.has_value()) s.mask = mask->data_ptr<bool>();
  if (is_user && padding_idx.has_value()) {
    s.has_pad = true;
    s.pad = *padding_idx;
  }
  s.mean = is_user && d.mean;
  s.L = is_user ? d.seq_len : 1;
  s.D = is_user ? d.user_dim : d.item_dim;
  s.H = is_user ? d.user_proj : d.item_proj;
  if (weight.has_value()) s.weight = weight->data_ptr();
  if (bias.has_value()) s.bias = bias->data_ptr();
  if (pooled.numel() > 0) s.pooled_out = pooled.data_ptr();
  if (mf.numel() > 0) s.mf_out = mf.data_ptr();
  s.vec_ok = s.D % vec == 0 && reinterpret_cast<uintptr_t>(s.src) % 16 == 0;
  return s;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> fused_input_cuda(
    const Tensor& user_in, const std::optional<Tensor>& mask_in, const std::optional<Tensor>& user_table_in,
    std::optional<int64_t> padding_idx, const Tensor& item_in, const std::optional<Tensor>& item_table_in,
    const std::optional<Tensor>& user_weight_in, const std::optional<Tensor>& user_bias_in,
    const std::optional<Tensor>& item_weight_in, const std::optional<Tensor>& item_bias_in, int64_t h_mf,
    c10::string_view mode, bool save) {
  const FusedDims d = check_fused_input(user_in, mask_in, user_table_in, padding_idx, item_in, item_table_in,
                                        user_weight_in, user_bias_in, item_weight_in, item_bias_in, h_mf, mode);
  TORCH_CHECK(user_in.is_cuda(), "neumf_fast: the CUDA kernel got user on ", user_in.device());
  const c10::cuda::CUDAGuard guard(user_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  DeviceState& state = device_state(user_in);
  raise_pending(state, stream, /*wait=*/true);  // a bad id of the previous call (id_check.cuh)
  const Tensor user = user_in.contiguous(), item = item_in.contiguous();
  const auto mask = contiguous(mask_in), user_table = contiguous(user_table_in), item_table = contiguous(item_table_in);
  const auto user_weight = contiguous(user_weight_in), user_bias = contiguous(user_bias_in);
  const auto item_weight = contiguous(item_weight_in), item_bias = contiguous(item_bias_in);

  const auto dtype = float_dtype(user, user_table);
  const auto out_opts = user.options().dtype(dtype);
  const auto acc_opts = user.options().dtype(at::toOpMathType(dtype));
  const int64_t B = d.batch;
  Tensor gmf = at::empty({B, d.h_mf}, out_opts);
  Tensor mlp_in = at::empty({B, d.h_mlp_user() + d.h_mlp_item()}, out_opts);
  // saved: what the backward reads (csrc/ops.h: check_fused_backward), nothing more
  auto saved = [&](bool keep, int64_t cols) { return keep ? at::empty({B, cols}, acc_opts) : at::empty({0}, acc_opts); };
  Tensor pooled_user = saved(save && user_weight.has_value(), d.user_dim);
  Tensor pooled_item = saved(save && item_weight.has_value(), d.item_dim);
  Tensor mf_user = saved(save, d.h_mf), mf_item = saved(save, d.h_mf);
  if (B == 0) return {gmf, mlp_in, pooled_user, pooled_item, mf_user, mf_item};

  const bool any_ids = d.user_ids || d.item_ids;
  const IdCheckMode check = any_ids ? id_check_mode() : IdCheckMode::kDeferred;
  // {user found, user id, item found, item id}: the device's persistent record
  int64_t* err_ptr = any_ids ? state.record->data_ptr<int64_t>() : nullptr;
  const int device = state.index, major = state.major, limit = state.smem_optin;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "neumf_fast.fused_input_cuda", [&] {
    constexpr int vec = vec_width<scalar_t>();
    ForwardParams p;
    p.user = make_side(d, true, user, mask, user_table, padding_idx, user_weight, user_bias, pooled_user, mf_user,
                       err_ptr, vec);
    p.item = make_side(d, false, item, std::nullopt, item_table, std::nullopt, item_weight, item_bias, pooled_item,
                       mf_item, err_ptr == nullptr ? nullptr : err_ptr + 2, vec);
    p.gmf = gmf.data_ptr();
    p.mlp_in = mlp_in.data_ptr();
    p.batch = B;
    p.h_mf = d.h_mf;
    bool launched = false;
    if constexpr (!std::is_same_v<scalar_t, double>) {
      if (use_tensor_cores<scalar_t>(major)) launched = launch_fused<scalar_t, true>(p, stream, device, limit);
    }
    if (!launched && !use_tensor_cores<scalar_t>(major)) launched = launch_fused<scalar_t, false>(p, stream, device, limit);
    if (!launched) {
      // Too wide for shared memory: pool into global memory, cuBLAS for the projection.
      using acc_t = acc_type<scalar_t>;
      const Tensor pu = pooled_user.numel() > 0 ? pooled_user : at::empty({B, d.user_dim}, acc_opts);
      const Tensor pi = pooled_item.numel() > 0 ? pooled_item : at::empty({B, d.item_dim}, acc_opts);
      for (auto [side, buf] : {std::make_pair(&p.user, pu), std::make_pair(&p.item, pi)}) {
        side->pooled_out = buf.data_ptr();
        pool_rows_kernel<scalar_t><<<grid_for(B, kWarps), kThreads, 0, stream>>>(*side, B);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      const Tensor ru = project(pu, user_weight, user_bias), ri = project(pi, item_weight, item_bias);
      if (save) {  // the MF halves of the GEMM outputs (of the pooled rows with no weight)
        mf_user.copy_(ru.narrow(1, 0, d.h_mf));
        mf_item.copy_(ri.narrow(1, 0, d.h_mf));
      }
      epilogue_kernel<scalar_t><<<grid_for(B * (d.user_proj + d.item_proj), kThreads), kThreads, 0, stream>>>(
          ru.data_ptr<acc_t>(), d.user_proj, ri.data_ptr<acc_t>(), d.item_proj, gmf.data_ptr<scalar_t>(),
          mlp_in.data_ptr<scalar_t>(), B, d.h_mf, d.h_mlp_user(), d.h_mlp_item());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });

  if (any_ids) {
    if (capturing()) {
      trap_on_bad_ids_kernel<<<1, 1, 0, stream>>>(err_ptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      after_launch(state, stream, check, d.user_ids ? user_table->size(0) : 0, d.item_ids ? item_table->size(0) : 0);
    }
  }
  return {gmf, mlp_in, pooled_user, pooled_item, mf_user, mf_item};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(neumf_fast, CUDA, m) { m.impl("fused_input", &cuda::fused_input_cuda); }

// Built only with the CUDA kernels, so it lives here rather than in ops.cpp.
TORCH_LIBRARY_FRAGMENT(neumf_fast, m) {
  m.def("_reset_id_check() -> ()", [] { cuda::reset_id_checks(); });
}

}  // namespace neumf_fast
