// Shared declarations of the neumf_fast op namespace: the dimensions of one fused NeuMF input
// call and the argument checks every device implementation runs before touching data.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <string_view>
#include <tuple>

namespace neumf_fast {

// Sizes of one call, all int64 so that every offset computed from them is 64-bit.
struct FusedDims {
  int64_t batch = 0;        // B
  int64_t seq_len = 0;      // L
  int64_t user_dim = 0;     // D
  int64_t item_dim = 0;     // D_i
  int64_t user_proj = 0;    // H_mf + H_mlp_user (D with no projection)
  int64_t item_proj = 0;    // H_mf + H_mlp_item (D_i with no projection)
  int64_t h_mf = 0;
  bool user_ids = false;    // user is ids into user_table, else dense [B, L, D]
  bool item_ids = false;    // item is ids into item_table, else dense [B, D_i]
  bool mean = false;        // mode == "mean"
  int64_t h_mlp_user() const { return user_proj - h_mf; }
  int64_t h_mlp_item() const { return item_proj - h_mf; }
};

// Validates ranks, shapes, dtypes and devices of a fused_input call and returns its sizes.
// Id ranges are data, not metadata: each kernel checks them where it reads them.
FusedDims check_fused_input(
    const at::Tensor& user, const std::optional<at::Tensor>& user_mask,
    const std::optional<at::Tensor>& user_table, const std::optional<int64_t>& padding_idx,
    const at::Tensor& item, const std::optional<at::Tensor>& item_table,
    const std::optional<at::Tensor>& user_weight, const std::optional<at::Tensor>& user_bias,
    const std::optional<at::Tensor>& item_weight, const std::optional<at::Tensor>& item_bias,
    int64_t h_mf, std::string_view mode);

// Validates the output gradients and the saved tensors of a fused_input_backward call (the
// inputs themselves go through check_fused_input first).  Saved, in op-math: the pooled rows
// [B, D] of a side with a weight (empty without), and each side's MF half [B, h_mf] of its
// projection (of its pooled row with no weight): what the backward reads, nothing more.
void check_fused_backward(const FusedDims& d, at::ScalarType dtype, const at::Tensor& grad_gmf,
                          const at::Tensor& grad_mlp_in, const at::Tensor& pooled_user, const at::Tensor& pooled_item,
                          const at::Tensor& mf_user, const at::Tensor& mf_item, bool user_proj, bool item_proj);

// [mf | mlp] = pooled @ W^T + b in op-math (pooled's dtype): one GEMM against the stacked
// weight; the pooled rows themselves with no weight.
at::Tensor project(const at::Tensor& pooled, const std::optional<at::Tensor>& weight,
                   const std::optional<at::Tensor>& bias);

// One side's d_pooled = d_proj @ W (d_proj itself with no weight), and its weight and bias
// gradients d_proj^T @ pooled and sum_b d_proj (GEMM and column-sum reductions, no atomics), each
// computed only when wanted (else an empty tensor; d_pooled undefined).  d_proj and pooled are
// in op-math; the weight gradients are returned in dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor> projection_backward(const at::Tensor& dproj, const at::Tensor& pooled,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   bool want_src, bool want_w, bool want_b,
                                                                   at::ScalarType dtype);

// The dtype of the float inputs (all share one).
at::ScalarType float_dtype(const at::Tensor& user, const std::optional<at::Tensor>& user_table);

// table_update_: the row-wise optimizers (neumf_fast/reference.py: table_update_ is the spec).
enum class TableOptimizer { kSgd, kAdam, kRowwiseAdagrad };

struct TableUpdateDims {
  int64_t rows = 0;       // R, the table's rows
  int64_t dim = 0;        // D
  int64_t groups = 0;     // M, the rows of ids and grad
  int64_t per_group = 0;  // K, the ids of a group (each receives the group's gradient)
  TableOptimizer optimizer = TableOptimizer::kSgd;
};

// Validates a table_update_ call's metadata and hyper-parameters (ids' range is data: each
// kernel checks it where it reads the ids).
TableUpdateDims check_table_update(const at::Tensor& table, const at::Tensor& moment1, const at::Tensor& moment2,
                                   const at::Tensor& step, const at::Tensor& ids, const at::Tensor& grad,
                                   std::string_view optimizer, double lr, double beta1, double beta2, double eps,
                                   double weight_decay);

}  // namespace neumf_fast
