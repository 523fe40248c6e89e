// CPU kernels of neumf_fast::fused_input and its backward.
//
// Math (see neumf_fast/reference.py, the spec):
//   pooled_user[b] = scale[b] * sum_l keep[b,l] * x[b,l,:]   (x dense, or user_table[ids[b,l]])
//   pooled_item[b] = item[b] or item_table[item_ids[b]]
//   proj_side      = pooled_side @ W_side^T + b_side          (identity with no weight)
//   gmf            = proj_user[:, :h_mf] * proj_item[:, :h_mf]
//   mlp_in         = cat(proj_user[:, h_mf:], proj_item[:, h_mf:])
//
// Tiling: rows are split across threads with at::parallel_for; each row of a pooled sum is
// accumulated in the op-math type (fp32 for bf16/fp16, else the input type) with at::vec
// vectors, and is never rounded to the input dtype before the projection.  The projections
// are one BLAS GEMM per side against the stacked [H_mf + H_mlp, D] weight, without the bias:
// the epilogue adds it, forms the GMF product and the cat, and writes the saved MF halves, in
// one pass per row.  From 1024 rows with both weights (runs_in_blocks) a call runs in fixed
// blocks of 128 rows, one parallel region per pass: the forward pools a block, projects it
// (single-threaded GEMMs into the task's own buffers) and runs the epilogue while it is in
// cache; the backward forms the block's d_proj, d_pooled and sequence gradient the same way.
// Smaller batches run each pass over the whole batch, the two sides' GEMMs one after the other
// (at serving sizes each is one thread's work in MKL; running the two on two threads at once
// measured slower on the 2-core VM, 36 against 45 µs at B=16, 2026-12-06, and slower still in a
// model whose tower has just evicted the caches).  With no weight on either side the epilogue
// runs in the pooling pass.  Outputs over 4 MB that nothing reads soon (the dense sequence
// gradient, large table gradients) are written with non-temporal stores.
//
// Saved for backward (returned as extra outputs, op-math dtype, when `save`): what the backward
// reads and nothing more (csrc/ops.h: check_fused_backward): pooled_user, pooled_item for a side
// with a weight (inputs of its weight gradient; empty without), and mf_user, mf_item, the first
// h_mf columns of each side's projection with its bias (of its pooled rows with no weight), the
// other factor of each GMF gradient, written by the epilogue: the full projections are never
// kept.  Nothing of size [B, L, D] is saved.
//
// Backward: one pass forms d_proj from d_gmf and d_mlp_in and sums it for db in fixed 128-row
// chunks; GEMMs give dW (one per side over the batch) and d_pooled.  The dense sequence
// gradient broadcasts d_pooled over L under the mask.  A table gradient row is the sum of its
// contributions in position order: each thread owns a range of table rows and either scatters
// into it (small tables) or writes it row by row from the positions bucketed by row (large
// ones; see table_grad), so the result does not depend on the thread count.  All offsets are
// int64.
#include "../ops.h"
#include "rows.h"
#include "table_grad.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/record_function.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>
#include <vector>

namespace neumf_fast {
namespace {

using at::Tensor;
using namespace cpu;  // rows.h, table_grad.h

// Per-row pooling scale: 1 for sum; 1/max(1, kept) for mean.  Also used by backward.
template <typename acc_t, typename index_t>
std::vector<acc_t> row_scales(const FusedDims& d, const Tensor& user, const std::optional<Tensor>& mask,
                              const std::optional<int64_t>& padding_idx) {
  std::vector<acc_t> scale(d.batch, acc_t(1));
  if (!d.mean) return scale;
  const int64_t L = d.seq_len;
  if (d.user_ids && padding_idx.has_value()) {
    const auto* ids = user.data_ptr<index_t>();
    const int64_t pad = *padding_idx;
    for (int64_t b = 0; b < d.batch; ++b) {
      int64_t kept = 0;
      for (int64_t l = 0; l < L; ++l) kept += static_cast<int64_t>(ids[b * L + l]) != pad;
      scale[b] = acc_t(1) / static_cast<acc_t>(std::max<int64_t>(kept, 1));
    }
  } else if (!d.user_ids && mask.has_value()) {
    const bool* m = mask->data_ptr<bool>();
    for (int64_t b = 0; b < d.batch; ++b) {
      int64_t kept = 0;
      for (int64_t l = 0; l < L; ++l) kept += m[b * L + l];
      scale[b] = acc_t(1) / static_cast<acc_t>(std::max<int64_t>(kept, 1));
    }
  } else {
    std::fill(scale.begin(), scale.end(), acc_t(1) / static_cast<acc_t>(std::max<int64_t>(L, 1)));
  }
  return scale;
}

template <typename index_t>
inline int64_t checked_id(index_t raw, int64_t rows, const char* name) {
  const auto id = static_cast<int64_t>(raw);
  TORCH_CHECK_INDEX(id >= 0 && id < rows, "neumf_fast: ", name, " id ", id, " is out of range for a table with ",
                    rows, " rows");
  return id;
}

// Asks for the table rows of ids[0..n) ahead of their use: the rows of a sequence lie anywhere in
// the table, so the hardware prefetcher cannot guess them; asking for the next user's rows while
// this one's are summed keeps many reads in flight.  Ids out of range are skipped here (the
// pooling itself raises on them).
template <typename scalar_t, typename index_t>
inline void prefetch_rows(const scalar_t* table, const index_t* ids, int64_t n, int64_t rows, int64_t dim) {
  const int64_t bytes = dim * static_cast<int64_t>(sizeof(scalar_t));
  for (int64_t l = 0; l < n; ++l) {
    const auto id = static_cast<int64_t>(ids[l]);
    if (id < 0 || id >= rows) continue;
    const char* row = reinterpret_cast<const char*>(table + id * dim);
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(row + off);
  }
}

// pooled[b, :] (op-math) for b in [b0, b1), from the dense or id user sequence.
template <typename scalar_t, typename index_t>
void pool_user_rows(const FusedDims& d, const Tensor& user, const std::optional<Tensor>& mask,
                    const std::optional<Tensor>& table, const std::optional<int64_t>& padding_idx,
                    const std::vector<opmath_t<scalar_t>>& scale, Tensor& pooled, int64_t b0, int64_t b1) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t L = d.seq_len, D = d.user_dim;
  auto* out = pooled.data_ptr<acc_t>();
  const bool* m = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
  const scalar_t* x = d.user_ids ? table->data_ptr<scalar_t>() : user.data_ptr<scalar_t>();
  const index_t* ids = d.user_ids ? user.data_ptr<index_t>() : nullptr;
  const int64_t rows = d.user_ids ? table->size(0) : 0;
  const bool has_pad = padding_idx.has_value();
  const int64_t pad = padding_idx.value_or(0);
  std::vector<const scalar_t*> rows_of_b(L);
  for (int64_t b = b0; b < b1; ++b) {
    int64_t n = 0;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t p = b * L + l;
      if (ids != nullptr) {
        if (has_pad && static_cast<int64_t>(ids[p]) == pad) continue;
        rows_of_b[n++] = x + checked_id(ids[p], rows, "user") * D;
      } else {
        if (m != nullptr && !m[p]) continue;
        rows_of_b[n++] = x + p * D;
      }
    }
    if (ids != nullptr && b + 1 < b1) prefetch_rows(x, ids + (b + 1) * L, L, rows, D);
    sum_rows<scalar_t>(out + b * D, rows_of_b.data(), n, D, scale[b]);
  }
}

// pooled_item[b, :] (op-math) for b in [b0, b1): the dense row or the gathered table row.
template <typename scalar_t, typename index_t>
void gather_item_rows(const FusedDims& d, const Tensor& item, const std::optional<Tensor>& table, Tensor& pooled,
                      int64_t b0, int64_t b1) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t D = d.item_dim;
  auto* out = pooled.data_ptr<acc_t>();
  const scalar_t* x = d.item_ids ? table->data_ptr<scalar_t>() : item.data_ptr<scalar_t>();
  const index_t* ids = d.item_ids ? item.data_ptr<index_t>() : nullptr;
  const int64_t rows = d.item_ids ? table->size(0) : 0;
  for (int64_t b = b0; b < b1; ++b) {
    const scalar_t* row = ids != nullptr ? x + checked_id(ids[b], rows, "item") * D : x + b * D;
    sum_rows<scalar_t>(out + b * D, &row, 1, D, acc_t(1));
  }
}

// The epilogue, one pass over each row of both sides' projections (op-math, bias not yet added:
// the GEMMs run without it, so the bias is added here while the row is in registers instead of
// being broadcast into each GEMM's output first):
//   gmf[b]    = (proj_user[b, :h_mf] + bias) * (proj_item[b, :h_mf] + bias), rounded once;
//   mlp_in[b] = [proj_user[b, h_mf:] + bias | proj_item[b, h_mf:] + bias], rounded once;
//   mf_user[b], mf_item[b] = the MF halves with their biases, op-math (saved for backward; null
//   pointers when nothing is saved), written here rather than copied out afterwards.
template <typename scalar_t>
struct Epilogue {
  using acc_t = opmath_t<scalar_t>;
  const FusedDims& d;
  const acc_t *user, *item;                // [B, user_proj], [B, item_proj]: row b at b - row0
  const acc_t *user_bias, *item_bias;      // [user_proj], [item_proj] or null
  scalar_t *gmf, *mlp_in;
  acc_t *mf_user, *mf_item;                // [B, h_mf] or null
  int64_t row0 = 0;                        // the batch row of user[0] and item[0]

  void rows(int64_t b0, int64_t b1) const {
    const int64_t Hu = d.user_proj, Hi = d.item_proj, Hm = d.h_mf, Hmu = d.h_mlp_user(), Hmi = d.h_mlp_item();
    // columns [i, i + w) of a projection row plus its bias
    auto col = [](const acc_t* row, const acc_t* bias, int64_t i, int64_t w) {
      auto v = load_part(row + i, w);
      return bias != nullptr ? v + load_part(bias + i, w) : v;
    };
    const acc_t* bu_mlp = user_bias != nullptr ? user_bias + Hm : nullptr;
    const acc_t* bi_mlp = item_bias != nullptr ? item_bias + Hm : nullptr;
    for (int64_t b = b0; b < b1; ++b) {
      const acc_t* u = user + (b - row0) * Hu;
      const acc_t* v = item + (b - row0) * Hi;
      scalar_t* mlp = mlp_in + b * (Hmu + Hmi);
      store_row(gmf + b * Hm, Hm, [&](int64_t i, int64_t w) { return col(u, user_bias, i, w) * col(v, item_bias, i, w); });
      store_row(mlp, Hmu, [&](int64_t i, int64_t w) { return col(u + Hm, bu_mlp, i, w); });
      store_row(mlp + Hmu, Hmi, [&](int64_t i, int64_t w) { return col(v + Hm, bi_mlp, i, w); });
      if (mf_user != nullptr) {
        store_row(mf_user + b * Hm, Hm, [&](int64_t i, int64_t w) { return col(u, user_bias, i, w); });
        store_row(mf_item + b * Hm, Hm, [&](int64_t i, int64_t w) { return col(v, item_bias, i, w); });
      }
    }
  }
};

// Rows per block of a blocked forward and backward (below), and per chunk of the bias gradients'
// sums; a fixed number, so results do not depend on the thread count.  A block's two
// projections, [128, 256] each at the design shape, stay in cache.
constexpr int64_t kBlockRows = 128;

// Whether a call runs block by block (forward and backward): both sides projected, and at least 8 blocks (smaller
// batches take the whole-batch GEMMs).  Not a function of the
// thread count, so neither is the path a batch takes.
inline bool runs_in_blocks(const FusedDims& d, bool both_weights) {
  return both_weights && d.batch >= 8 * kBlockRows && !at::in_parallel_region();
}

// The forward block by block: each task pools a block of rows (pool(b0, b1)), projects it with
// one GEMM per side (stacked [H_mf + H_mlp, D] weights, no bias) into its own buffers and runs
// the epilogue on them while they are in cache: the [B, H] projections are never written out
// and read back.  Each GEMM is single-threaded (MKL inside a parallel region), the blocks are
// spread over the threads.
template <typename scalar_t, typename Pool>
void forward_blocks(const FusedDims& d, const Pool& pool, const Tensor& pooled_user, const Tensor& pooled_item,
                    const Tensor& user_weight, const Tensor& item_weight, Epilogue<scalar_t> epilogue) {
  using acc_t = opmath_t<scalar_t>;
  const auto acc_opts = pooled_user.options();
  // the GEMMs stay in op-math whatever autocast says (as in project())
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const Tensor wu = user_weight.to(acc_opts.dtype()).t(), wi = item_weight.to(acc_opts.dtype()).t();
  const int64_t R = kBlockRows, blocks = (d.batch + R - 1) / R;
  // Worker threads start with default thread-local state; the GEMMs need the caller's (below
  // autograd: an out= GEMM on a weight that requires grad would otherwise raise; no autocast).
  const at::ThreadLocalState caller;
  at::parallel_for(0, blocks, 1, [&](int64_t k0, int64_t k1) {
    at::ThreadLocalStateGuard same_state(caller);
    Tensor proj_user = at::empty({R, d.user_proj}, acc_opts), proj_item = at::empty({R, d.item_proj}, acc_opts);
    Epilogue<scalar_t> e = epilogue;
    e.user = proj_user.data_ptr<acc_t>();
    e.item = proj_item.data_ptr<acc_t>();
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t b0 = k * R, n = std::min(R, d.batch - b0);
      pool(b0, b0 + n);
      Tensor user_rows = proj_user.narrow(0, 0, n), item_rows = proj_item.narrow(0, 0, n);
      at::mm_out(user_rows, pooled_user.narrow(0, b0, n), wu);
      at::mm_out(item_rows, pooled_item.narrow(0, b0, n), wi);
      e.row0 = b0;
      e.rows(b0, b0 + n);
    }
  });
}

// Dispatch on (float dtype, user index dtype, item index dtype); index types default to int64
// for dense inputs so that only the used combinations do real work.
#define NEUMF_DISPATCH(DTYPE, USER_IDX, ITEM_IDX, NAME, ...)                                          \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, DTYPE, NAME, [&] {                       \
    AT_DISPATCH_INDEX_TYPES(USER_IDX, NAME, [&] {                                                     \
      using user_index_t = index_t;                                                                   \
      AT_DISPATCH_INDEX_TYPES(ITEM_IDX, NAME, [&] {                                                   \
        using item_index_t = index_t;                                                                 \
        __VA_ARGS__();                                                                                \
      });                                                                                             \
    });                                                                                               \
  })

at::ScalarType index_dtype(bool is_ids, const Tensor& t) { return is_ids ? t.scalar_type() : at::kLong; }

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> fused_input_cpu(
    const Tensor& user_in, const std::optional<Tensor>& mask_in, const std::optional<Tensor>& user_table_in,
    std::optional<int64_t> padding_idx, const Tensor& item_in, const std::optional<Tensor>& item_table_in,
    const std::optional<Tensor>& user_weight, const std::optional<Tensor>& user_bias,
    const std::optional<Tensor>& item_weight, const std::optional<Tensor>& item_bias, int64_t h_mf,
    c10::string_view mode, bool save) {
  const FusedDims d = check_fused_input(user_in, mask_in, user_table_in, padding_idx, item_in, item_table_in,
                                        user_weight, user_bias, item_weight, item_bias, h_mf, mode);
  TORCH_CHECK(user_in.device().is_cpu(), "neumf_fast: the CPU kernel got user on ", user_in.device());
  // Non-contiguous inputs are accepted: made contiguous once here (a no-op when they already are).
  const Tensor user = user_in.contiguous(), item = item_in.contiguous();
  std::optional<Tensor> mask, user_table, item_table;
  if (mask_in) mask = mask_in->contiguous();
  if (user_table_in) user_table = user_table_in->contiguous();
  if (item_table_in) item_table = item_table_in->contiguous();

  const auto dtype = float_dtype(user, user_table);
  const auto acc_dtype = at::toOpMathType(dtype);
  const auto acc_opts = user.options().dtype(acc_dtype);
  const auto out_opts = user.options().dtype(dtype);
  Tensor pooled_user = at::empty({d.batch, d.user_dim}, acc_opts);
  // An inference call on a dense op-math item projects the item itself: its pooled row would be
  // a copy, needed only as a saved output (an output must not alias an input).
  const bool item_itself = !save && !d.item_ids && item_weight && dtype == acc_dtype;
  Tensor pooled_item = item_itself ? item : at::empty({d.batch, d.item_dim}, acc_opts);
  Tensor gmf = at::empty({d.batch, d.h_mf}, out_opts);
  Tensor mlp_in = at::empty({d.batch, d.h_mlp_user() + d.h_mlp_item()}, out_opts);
  auto none = [&] { return at::empty({0}, acc_opts); };
  Tensor mf_user = save ? at::empty({d.batch, d.h_mf}, acc_opts) : none();
  Tensor mf_item = save ? at::empty({d.batch, d.h_mf}, acc_opts) : none();
  // With no weight on either side the pooled rows are the projections, and each block of rows
  // is pooled, gathered and combined in one pass while it is in cache (NeuMF, GMF and MLP have
  // no projection: their tables are the projections).
  const bool one_pass = !user_weight && !item_weight;
  // the biases in op-math, added by the epilogue (a no-op conversion for fp32 and fp64)
  const Tensor user_bias_acc = user_bias ? user_bias->to(acc_dtype).contiguous() : Tensor();
  const Tensor item_bias_acc = item_bias ? item_bias->to(acc_dtype).contiguous() : Tensor();
  NEUMF_DISPATCH(dtype, index_dtype(d.user_ids, user), index_dtype(d.item_ids, item), "neumf_fast.fused_input", [&] {
    using acc_t = opmath_t<scalar_t>;
    auto ptr = [](const Tensor& t) { return t.defined() && t.numel() > 0 ? t.data_ptr<acc_t>() : nullptr; };
    // (proj rows are filled in below before the epilogue reads them; pooled rows serve one_pass)
    Epilogue<scalar_t> epilogue{d, ptr(pooled_user), ptr(pooled_item), ptr(user_bias_acc), ptr(item_bias_acc),
                                gmf.data_ptr<scalar_t>(), mlp_in.data_ptr<scalar_t>(), ptr(mf_user), ptr(mf_item)};
    const auto scale = row_scales<acc_t, user_index_t>(d, user, mask, padding_idx);
    auto pool = [&](int64_t b0, int64_t b1) {
      pool_user_rows<scalar_t, user_index_t>(d, user, mask, user_table, padding_idx, scale, pooled_user, b0, b1);
      if (!item_itself) gather_item_rows<scalar_t, item_index_t>(d, item, item_table, pooled_item, b0, b1);
    };
    if (runs_in_blocks(d, user_weight && item_weight)) {
      RECORD_FUNCTION("neumf_fast::cpu_forward_blocks", std::vector<c10::IValue>());
      return forward_blocks<scalar_t>(d, pool, pooled_user, pooled_item, *user_weight, *item_weight, epilogue);
    }
    {
      RECORD_FUNCTION("neumf_fast::cpu_pool", std::vector<c10::IValue>());
      const int64_t work = d.seq_len * d.user_dim + d.item_dim + (one_pass ? d.user_proj + d.item_proj : 0);
      at::parallel_for(0, d.batch, grain_for(work), [&](int64_t b0, int64_t b1) {
        pool(b0, b1);
        if (one_pass) epilogue.rows(b0, b1);
      });
    }
    if (one_pass) return;
    // The GEMMs, without the bias (the epilogue adds it).  With no weight a side's projection
    // rows are its pooled rows.
    const Tensor proj_user = project(pooled_user, user_weight, std::nullopt);
    const Tensor proj_item = project(pooled_item, item_weight, std::nullopt);
    RECORD_FUNCTION("neumf_fast::cpu_epilogue", std::vector<c10::IValue>());
    epilogue.user = proj_user.data_ptr<acc_t>();
    epilogue.item = proj_item.data_ptr<acc_t>();
    at::parallel_for(0, d.batch, grain_for(d.user_proj + d.item_proj),
                     [&](int64_t b0, int64_t b1) { epilogue.rows(b0, b1); });
  });
  if (!save) return {gmf, mlp_in, none(), none(), none(), none()};  // inference: nothing for backward
  return {gmf, mlp_in, user_weight ? pooled_user : none(), item_weight ? pooled_item : none(), mf_user, mf_item};
}

// The dense sequence gradient for b in [b0, b1): d_x[b, l] = keep[b, l] * scale[b] * d_pooled[b],
// the broadcast over L.  Each row b is scaled once, then written L times (non-temporal stores
// when `stream`: the caller fences).
template <typename scalar_t>
void broadcast_block(const FusedDims& d, const bool* m, const opmath_t<scalar_t>* scale,
                     const opmath_t<scalar_t>* dpooled, scalar_t* grad_x, bool stream, int64_t b0, int64_t b1) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t L = d.seq_len, D = d.user_dim;
  std::vector<acc_t> row(D), zeros(D, acc_t(0));
  for (int64_t b = b0; b < b1; ++b) {
    scale_store_row<acc_t>(row.data(), dpooled + b * D, scale[b], D);
    for (int64_t l = 0; l < L; ++l) {
      const int64_t p = b * L + l;
      const acc_t* src = m != nullptr && !m[p] ? zeros.data() : row.data();
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (stream) {
          stream_row(grad_x + p * D, src, D);
          continue;
        }
      }
      scale_store_row<scalar_t>(grad_x + p * D, src, acc_t(1), D);
    }
  }
}

// Whether the dense sequence gradient is written with non-temporal stores.
inline bool stream_sequence_grad(const Tensor& grad_x) {
  return grad_x.scalar_type() == at::kFloat && grad_x.nbytes() > kStreamedBytes;
}

// d_proj_user[b] = [d_gmf[b] * mf_item[b] | d_mlp_in[b, :H_mlp_u]] and d_proj_item[b] = [d_gmf[b] *
// mf_user[b] | d_mlp_in[b, H_mlp_u:]], in op-math, chunk by chunk (kBlockRows rows); with
// `partial`, also each chunk's column sums, the bias gradients' terms, while the chunk is in cache
// (a separate column sum would read both d_proj buffers again).  The chunks are fixed and
// bias_sums adds them in order, so the bias gradients do not depend on the thread count.
template <typename scalar_t>
struct ProjGrads {
  using acc_t = opmath_t<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  const FusedDims& d;
  const scalar_t *grad_gmf, *grad_mlp;
  const acc_t *mf_user, *mf_item;
  acc_t *dproj_user, *dproj_item;
  acc_t* partial;  // [chunks, user_proj + item_proj] or null

  int64_t chunks() const { return (d.batch + kBlockRows - 1) / kBlockRows; }

  void chunk(int64_t c) const {
    const int64_t Hu = d.user_proj, Hi = d.item_proj, Hm = d.h_mf, Hmu = d.h_mlp_user(), Hmi = d.h_mlp_item();
    const int64_t b0 = c * kBlockRows, b1 = std::min(d.batch, b0 + kBlockRows);
    for (int64_t b = b0; b < b1; ++b) {
      mul_row<scalar_t>(dproj_user + b * Hu, grad_gmf + b * Hm, mf_item + b * Hm, Hm);
      mul_row<scalar_t>(dproj_item + b * Hi, grad_gmf + b * Hm, mf_user + b * Hm, Hm);
      at::vec::convert(grad_mlp + b * (Hmu + Hmi), dproj_user + b * Hu + Hm, Hmu);
      at::vec::convert(grad_mlp + b * (Hmu + Hmi) + Hmu, dproj_item + b * Hi + Hm, Hmi);
    }
    if (partial == nullptr) return;
    column_sums(dproj_user, Hu, b0, b1, partial + c * (Hu + Hi));
    column_sums(dproj_item, Hi, b0, b1, partial + c * (Hu + Hi) + Hu);
  }

  static void column_sums(const acc_t* rows, int64_t n, int64_t b0, int64_t b1, acc_t* out) {
    for (int64_t i = 0; i < n; i += Vec::size()) {
      const int64_t w = std::min<int64_t>(Vec::size(), n - i);
      Vec a(0);
      for (int64_t b = b0; b < b1; ++b) a += load_part(rows + b * n + i, w);
      a.store(out + i, w);
    }
  }

  // db = [sum_b d_proj_user[b] | sum_b d_proj_item[b]]: the chunks' sums in chunk order
  void bias_sums(acc_t* db) const { column_sums(partial, d.user_proj + d.item_proj, 0, chunks(), db); }
};

// The backward of a blocked forward (runs_in_blocks), block by block: each task forms a
// block's d_proj rows (and bias sums), its d_pooled rows with one single-threaded GEMM per side
// (d_pooled = d_proj @ W, for the sides whose source gradient is wanted) and, for a dense user,
// the block's sequence gradient from those rows while they are in cache.  The weight gradients,
// reductions over the whole batch, are left to one GEMM per side afterwards.
template <typename scalar_t>
void backward_blocks(const FusedDims& d, const ProjGrads<scalar_t>& grads, const Tensor& dproj_user,
                     const Tensor& dproj_item, const Tensor& user_weight, const Tensor& item_weight,
                     Tensor& dpooled_user, Tensor& dpooled_item, const std::optional<Tensor>& mask,
                     const std::vector<opmath_t<scalar_t>>& scale, Tensor* grad_x) {
  using acc_t = opmath_t<scalar_t>;
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);  // as in project()
  const Tensor wu = user_weight.to(dproj_user.scalar_type()), wi = item_weight.to(dproj_item.scalar_type());
  const bool* m = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
  const bool stream = grad_x != nullptr && stream_sequence_grad(*grad_x);
  const at::ThreadLocalState caller;  // for the GEMMs on the worker threads (see forward_blocks)
  at::parallel_for(0, grads.chunks(), 1, [&](int64_t k0, int64_t k1) {
    at::ThreadLocalStateGuard same_state(caller);
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t b0 = k * kBlockRows, n = std::min(kBlockRows, d.batch - b0);
      grads.chunk(k);
      for (auto [dpooled, dproj, w] : {std::tie(dpooled_user, dproj_user, wu), std::tie(dpooled_item, dproj_item, wi)}) {
        if (!dpooled.defined()) continue;
        Tensor rows = dpooled.narrow(0, b0, n);
        at::mm_out(rows, dproj.narrow(0, b0, n), w);
      }
      if (grad_x != nullptr) {
        broadcast_block<scalar_t>(d, m, scale.data(), dpooled_user.data_ptr<acc_t>(), grad_x->data_ptr<scalar_t>(),
                                  stream, b0, b0 + n);
      }
    }
    if (stream) stream_fence();
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> fused_input_backward_cpu(
    const Tensor& grad_gmf_in, const Tensor& grad_mlp_in_in, const Tensor& user_in,
    const std::optional<Tensor>& mask_in, const std::optional<Tensor>& user_table,
    std::optional<int64_t> padding_idx, const Tensor& item_in, const std::optional<Tensor>& item_table,
    const std::optional<Tensor>& user_weight, const std::optional<Tensor>& user_bias,
    const std::optional<Tensor>& item_weight, const std::optional<Tensor>& item_bias, int64_t h_mf,
    c10::string_view mode, const Tensor& pooled_user, const Tensor& pooled_item, const Tensor& mf_user_in,
    const Tensor& mf_item_in, std::array<bool, 6> output_mask) {
  const FusedDims d = check_fused_input(user_in, mask_in, user_table, padding_idx, item_in, item_table,
                                        user_weight, user_bias, item_weight, item_bias, h_mf, mode);
  const auto dtype = float_dtype(user_in, user_table);
  const auto acc_dtype = at::toOpMathType(dtype);
  check_fused_backward(d, dtype, grad_gmf_in, grad_mlp_in_in, pooled_user, pooled_item, mf_user_in, mf_item_in,
                       user_weight.has_value(), item_weight.has_value());
  const Tensor mf_user = mf_user_in.contiguous(), mf_item = mf_item_in.contiguous();  // [B, h_mf]
  const Tensor user = user_in.contiguous(), item = item_in.contiguous();
  const Tensor grad_gmf = grad_gmf_in.contiguous(), grad_mlp = grad_mlp_in_in.contiguous();
  std::optional<Tensor> mask;
  if (mask_in) mask = mask_in->contiguous();
  // named flags, not a structured binding: lambdas below capture them (C++20 only for bindings)
  const bool want_user_src = output_mask[0], want_item_src = output_mask[1], want_user_w = output_mask[2],
             want_user_b = output_mask[3], want_item_w = output_mask[4], want_item_b = output_mask[5];

  // d_proj_user = [d_gmf * mf_item | d_mlp_in[:, :H_mlp_u]], likewise for the item, in op-math
  // (ProjGrads); mf_side, saved by the forward, is the first h_mf columns of that side's
  // projection rows.  The bias gradients (column sums of d_proj) come out of the same pass.
  const auto acc_opts = user.options().dtype(acc_dtype);
  const auto out_opts = user.options().dtype(dtype);
  auto none = [&] { return at::empty({0}, out_opts); };
  const bool want_user_db = want_user_b && user_bias.has_value(), want_item_db = want_item_b && item_bias.has_value();
  const bool blocked = runs_in_blocks(d, user_weight && item_weight);
  Tensor dproj_user = at::empty({d.batch, d.user_proj}, acc_opts);
  Tensor dproj_item = at::empty({d.batch, d.item_proj}, acc_opts);
  Tensor db = want_user_db || want_item_db ? at::empty({d.user_proj + d.item_proj}, acc_opts) : Tensor();
  Tensor dpooled_user, dpooled_item, grad_user_w = none(), grad_item_w = none(), unused;
  Tensor grad_user_src = none(), grad_item_src = none();
  NEUMF_DISPATCH(dtype, index_dtype(d.user_ids, user), index_dtype(d.item_ids, item),
                 "neumf_fast.fused_input_backward", [&] {
    using acc_t = opmath_t<scalar_t>;
    const int64_t chunks = (d.batch + kBlockRows - 1) / kBlockRows;
    std::vector<acc_t> partial(db.defined() ? chunks * (d.user_proj + d.item_proj) : 0);
    const ProjGrads<scalar_t> grads{d, grad_gmf.data_ptr<scalar_t>(), grad_mlp.data_ptr<scalar_t>(),
                                    mf_user.data_ptr<acc_t>(), mf_item.data_ptr<acc_t>(),
                                    dproj_user.data_ptr<acc_t>(), dproj_item.data_ptr<acc_t>(),
                                    db.defined() ? partial.data() : nullptr};
    const auto scale = row_scales<acc_t, user_index_t>(d, user, mask, padding_idx);
    const bool dense_user = want_user_src && !d.user_ids;
    if (dense_user) grad_user_src = at::empty({d.batch, d.seq_len, d.user_dim}, out_opts);
    if (blocked) {
      RECORD_FUNCTION("neumf_fast::cpu_backward_blocks", std::vector<c10::IValue>());
      if (want_user_src) dpooled_user = at::empty({d.batch, d.user_dim}, acc_opts);
      if (want_item_src) dpooled_item = at::empty({d.batch, d.item_dim}, acc_opts);
      backward_blocks<scalar_t>(d, grads, dproj_user, dproj_item, *user_weight, *item_weight, dpooled_user,
                                dpooled_item, mask, scale, dense_user ? &grad_user_src : nullptr);
    } else {
      {
        RECORD_FUNCTION("neumf_fast::cpu_dproj", std::vector<c10::IValue>());
        at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
          for (int64_t c = c0; c < c1; ++c) grads.chunk(c);
        });
      }
      std::tie(dpooled_user, grad_user_w, unused) =
          projection_backward(dproj_user, pooled_user, user_weight, want_user_src, want_user_w, false, dtype);
      std::tie(dpooled_item, grad_item_w, unused) =
          projection_backward(dproj_item, pooled_item, item_weight, want_item_src, want_item_w, false, dtype);
      if (dense_user) {
        RECORD_FUNCTION("neumf_fast::cpu_broadcast", std::vector<c10::IValue>());
        const bool* m = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
        const bool stream = stream_sequence_grad(grad_user_src);
        at::parallel_for(0, d.batch, grain_for(d.seq_len * d.user_dim), [&](int64_t b0, int64_t b1) {
          broadcast_block<scalar_t>(d, m, scale.data(), dpooled_user.data_ptr<acc_t>(),
                                    grad_user_src.data_ptr<scalar_t>(), stream, b0, b1);
          if (stream) stream_fence();
        });
      }
    }
    if (db.defined()) grads.bias_sums(db.data_ptr<acc_t>());
    if (want_user_src && d.user_ids) {
      grad_user_src = table_grad<scalar_t, user_index_t>(user, d.seq_len, padding_idx, user_table->size(0),
                                                         d.user_dim, dpooled_user, scale);
    }
    if (want_item_src) {
      if (d.item_ids) {
        const std::vector<acc_t> ones(d.batch, acc_t(1));
        grad_item_src = table_grad<scalar_t, item_index_t>(item, 1, std::nullopt, item_table->size(0), d.item_dim,
                                                           dpooled_item, ones);
      } else {
        grad_item_src = dpooled_item.to(dtype);  // a fresh tensor: dpooled_item is ours
      }
    }
  });
  if (blocked) {  // the weight gradients: one GEMM per side over the whole batch
    std::tie(unused, grad_user_w, unused) =
        projection_backward(dproj_user, pooled_user, user_weight, false, want_user_w, false, dtype);
    std::tie(unused, grad_item_w, unused) =
        projection_backward(dproj_item, pooled_item, item_weight, false, want_item_w, false, dtype);
  }
  Tensor grad_user_b = want_user_db ? db.narrow(0, 0, d.user_proj).to(dtype, false, /*copy=*/true) : none();
  Tensor grad_item_b = want_item_db ? db.narrow(0, d.user_proj, d.item_proj).to(dtype, false, /*copy=*/true) : none();
  return {grad_user_src, grad_item_src, grad_user_w, grad_user_b, grad_item_w, grad_item_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(neumf_fast, CPU, m) {
  m.impl("fused_input", &fused_input_cpu);
  m.impl("fused_input_backward", &fused_input_backward_cpu);
}

}  // namespace neumf_fast
