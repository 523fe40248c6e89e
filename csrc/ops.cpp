// The neumf_fast op namespace: schemas (declared once, here) and the shared argument checks.
// Device files only register implementations (TORCH_LIBRARY_IMPL); Python adds the fake
// (meta) kernels and autograd (neumf_fast/ops/_library.py).
#include "ops.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <Python.h>
#include <c10/core/ScalarType.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <string>

namespace neumf_fast {

namespace {

bool is_index_dtype(at::ScalarType t) { return t == at::kLong || t == at::kInt; }

bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// A dtype as Python prints it ("torch.float32"), as in the Python check's messages.
std::string py_dtype(at::ScalarType t) { return "torch." + std::string(c10::getDtypeNames(t).first); }

void check_same(const at::Tensor& t, const char* name, at::ScalarType dtype, const at::Device& device) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, "neumf_fast: ", name, " has dtype ", py_dtype(t.scalar_type()),
                   " but the other float inputs have ", py_dtype(dtype));
  TORCH_CHECK_VALUE(t.device() == device, "neumf_fast: ", name, " is on ", t.device(), " but user is on ", device);
}

}  // namespace

at::ScalarType float_dtype(const at::Tensor& user, const std::optional<at::Tensor>& user_table) {
  return user_table.has_value() ? user_table->scalar_type() : user.scalar_type();
}

// Every check of a call's metadata, for the C++ kernels (the Triton launcher and the reference
// have theirs in neumf_fast/ops/_checks.py): TypeError for a dtype, ValueError for the rest,
// each message naming the argument and the problem (tests/test_errors.py).
FusedDims check_fused_input(
    const at::Tensor& user, const std::optional<at::Tensor>& user_mask,
    const std::optional<at::Tensor>& user_table, const std::optional<int64_t>& padding_idx,
    const at::Tensor& item, const std::optional<at::Tensor>& item_table,
    const std::optional<at::Tensor>& user_weight, const std::optional<at::Tensor>& user_bias,
    const std::optional<at::Tensor>& item_weight, const std::optional<at::Tensor>& item_bias,
    int64_t h_mf, std::string_view mode) {
  FusedDims d;
  const auto device = user.device();
  TORCH_CHECK_VALUE(mode == "sum" || mode == "mean", "neumf_fast: mode must be one of ('sum', 'mean'), got '",
                    std::string(mode), "'");
  d.mean = mode == "mean";

  at::ScalarType dtype;
  d.user_ids = is_index_dtype(user.scalar_type());
  if (d.user_ids) {
    TORCH_CHECK_VALUE(user_table.has_value(), "neumf_fast: user ids need user_table");
    TORCH_CHECK_VALUE(user.dim() == 2, "neumf_fast: user ids must be [B, L], got ", user.sizes());
    TORCH_CHECK_VALUE(!user_mask.has_value(), "neumf_fast: user_mask must be None for id input (use padding_idx)");
    TORCH_CHECK_VALUE(user_table->dim() == 2, "neumf_fast: user_table must be [N, D], got ", user_table->sizes());
    dtype = user_table->scalar_type();
    d.user_dim = user_table->size(1);
    TORCH_CHECK_VALUE(user_table->device() == device, "neumf_fast: user_table is on ", user_table->device(),
                      " but user is on ", device);
  } else if (is_float_dtype(user.scalar_type())) {
    TORCH_CHECK_VALUE(!user_table.has_value(),
                      "neumf_fast: user_table must be None when user is dense (ids are int32/int64)");
    TORCH_CHECK_VALUE(user.dim() == 3, "neumf_fast: dense user must be [B, L, D], got ", user.sizes());
    TORCH_CHECK_VALUE(!padding_idx.has_value(),
                      "neumf_fast: padding_idx must be None for dense input (use user_mask)");
    if (user_mask.has_value()) {
      TORCH_CHECK_TYPE(user_mask->scalar_type() == at::kBool, "neumf_fast: user_mask must be bool, got ",
                       py_dtype(user_mask->scalar_type()));
      TORCH_CHECK_VALUE(user_mask->sizes() == user.sizes().slice(0, 2), "neumf_fast: user_mask must be [B, L] = ",
                        user.sizes().slice(0, 2), ", got ", user_mask->sizes());
      TORCH_CHECK_VALUE(user_mask->device() == device, "neumf_fast: user_mask is on ", user_mask->device(),
                        " but user is on ", device);
    }
    dtype = user.scalar_type();
    d.user_dim = user.size(2);
  } else {
    TORCH_CHECK_TYPE(false, "neumf_fast: user must be float [B, L, D] or int32/int64 ids [B, L], got dtype ",
                     py_dtype(user.scalar_type()));
  }
  TORCH_CHECK_TYPE(is_float_dtype(dtype), "neumf_fast: float inputs must be one of (torch.float32, "
                   "torch.float64, torch.bfloat16, torch.float16), got ", py_dtype(dtype));
  d.batch = user.size(0);
  d.seq_len = user.size(1);

  d.item_ids = is_index_dtype(item.scalar_type());
  if (d.item_ids) {
    TORCH_CHECK_VALUE(item_table.has_value(), "neumf_fast: item ids need item_table");
    TORCH_CHECK_VALUE(item.dim() == 1, "neumf_fast: item ids must be [B], got ", item.sizes());
    TORCH_CHECK_VALUE(item.device() == device, "neumf_fast: item is on ", item.device(), " but user is on ", device);
    TORCH_CHECK_VALUE(item_table->dim() == 2, "neumf_fast: item_table must be [N_i, D_i], got ", item_table->sizes());
    check_same(*item_table, "item_table", dtype, device);
    d.item_dim = item_table->size(1);
  } else if (is_float_dtype(item.scalar_type())) {
    TORCH_CHECK_VALUE(!item_table.has_value(),
                      "neumf_fast: item_table must be None when item is dense (ids are int32/int64)");
    TORCH_CHECK_VALUE(item.dim() == 2, "neumf_fast: dense item must be [B, D_i], got ", item.sizes());
    check_same(item, "item", dtype, device);
    d.item_dim = item.size(1);
  } else {
    TORCH_CHECK_TYPE(false, "neumf_fast: item must be float [B, D_i] or int32/int64 ids [B], got dtype ",
                     py_dtype(item.scalar_type()));
  }
  TORCH_CHECK_VALUE(item.size(0) == d.batch, "neumf_fast: user has ", d.batch, " rows but item has ", item.size(0));

  auto check_side = [&](const std::optional<at::Tensor>& w, const std::optional<at::Tensor>& b,
                        int64_t in_dim, const char* wname, const char* bname) -> int64_t {
    if (!w.has_value()) {
      TORCH_CHECK_VALUE(!b.has_value(), "neumf_fast: ", bname, " given without ", wname);
      return in_dim;
    }
    TORCH_CHECK_VALUE(w->dim() == 2 && w->size(1) == in_dim, "neumf_fast: ", wname, " must be [H_mf + H_mlp, ",
                      in_dim, "], got ", w->sizes());
    check_same(*w, wname, dtype, device);
    if (b.has_value()) {
      TORCH_CHECK_VALUE(b->dim() == 1 && b->size(0) == w->size(0), "neumf_fast: ", bname, " must be [",
                        w->size(0), "], got ", b->sizes());
      check_same(*b, bname, dtype, device);
    }
    return w->size(0);
  };
  d.user_proj = check_side(user_weight, user_bias, d.user_dim, "user_weight", "user_bias");
  d.item_proj = check_side(item_weight, item_bias, d.item_dim, "item_weight", "item_bias");
  TORCH_CHECK_VALUE(h_mf >= 0 && h_mf <= d.user_proj && h_mf <= d.item_proj, "neumf_fast: h_mf=", h_mf,
                    " must lie in [0, min(", d.user_proj, ", ", d.item_proj,
                    ")] (the user and item projection widths)");
  d.h_mf = h_mf;
  return d;
}

void check_fused_backward(const FusedDims& d, at::ScalarType dtype, const at::Tensor& grad_gmf,
                          const at::Tensor& grad_mlp_in, const at::Tensor& pooled_user, const at::Tensor& pooled_item,
                          const at::Tensor& mf_user, const at::Tensor& mf_item, bool user_proj, bool item_proj) {
  const auto acc_dtype = at::toOpMathType(dtype);
  auto check_saved = [&](const at::Tensor& t, const char* name, int64_t cols) {
    TORCH_CHECK(t.scalar_type() == acc_dtype && t.dim() == 2 && t.size(0) == d.batch && t.size(1) == cols,
                "neumf_fast: saved ", name, " must be ", acc_dtype, " [", d.batch, ", ", cols, "], got ",
                t.scalar_type(), " ", t.sizes(), " (was the forward run with save=False?)");
  };
  // what the backward reads: the pooled rows of a side with a weight (for d_W), the MF halves
  if (user_proj) check_saved(pooled_user, "pooled_user", d.user_dim);
  if (item_proj) check_saved(pooled_item, "pooled_item", d.item_dim);
  check_saved(mf_user, "mf_user", d.h_mf);
  check_saved(mf_item, "mf_item", d.h_mf);
  TORCH_CHECK(grad_gmf.dim() == 2 && grad_gmf.size(0) == d.batch && grad_gmf.size(1) == d.h_mf,
              "neumf_fast: grad_gmf must be [", d.batch, ", ", d.h_mf, "], got ", grad_gmf.sizes());
  TORCH_CHECK(grad_mlp_in.dim() == 2 && grad_mlp_in.size(0) == d.batch &&
                  grad_mlp_in.size(1) == d.h_mlp_user() + d.h_mlp_item(),
              "neumf_fast: grad_mlp_in must be [", d.batch, ", ", d.h_mlp_user() + d.h_mlp_item(), "], got ",
              grad_mlp_in.sizes());
  for (const auto* t : {&grad_gmf, &grad_mlp_in, &pooled_user, &pooled_item, &mf_user}) {
    TORCH_CHECK(t->device() == mf_item.device(), "neumf_fast: the gradients and saved tensors of backward must "
                "share one device, got ", t->device(), " and ", mf_item.device());
  }
  TORCH_CHECK(grad_gmf.scalar_type() == dtype && grad_mlp_in.scalar_type() == dtype, "neumf_fast: grad_gmf and "
              "grad_mlp_in must be ", dtype, ", got ", grad_gmf.scalar_type(), " and ", grad_mlp_in.scalar_type());
}

at::Tensor project(const at::Tensor& pooled, const std::optional<at::Tensor>& weight,
                   const std::optional<at::Tensor>& bias) {
  if (!weight.has_value()) return pooled;
  // Called inside a kernel of ours while torch.autocast may be on: the GEMM must stay in op-math
  // (autocast would turn it bf16, and the kernels read its output as fp32).
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto acc = pooled.scalar_type();
  const at::Tensor w = weight->to(acc);
  if (bias.has_value()) return at::addmm(bias->to(acc), pooled, w.t());
  return at::mm(pooled, w.t());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> projection_backward(const at::Tensor& dproj, const at::Tensor& pooled,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   bool want_src, bool want_w, bool want_b,
                                                                   at::ScalarType dtype) {
  // Gradients not asked for are empty tensors, each its own (outputs of an op must not alias).
  auto none = [&] { return at::empty({0}, dproj.options().dtype(dtype)); };
  if (!weight.has_value()) return {dproj, none(), none()};
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);  // as in project()
  const at::Tensor gw = want_w ? at::mm(dproj.t(), pooled).to(dtype) : none();
  const at::Tensor gb = want_b ? at::sum(dproj, {0}).to(dtype) : none();
  const at::Tensor dpooled = want_src ? at::mm(dproj, weight->to(dproj.scalar_type())) : at::Tensor();
  return {dpooled, gw, gb};
}

TableUpdateDims check_table_update(const at::Tensor& table, const at::Tensor& moment1, const at::Tensor& moment2,
                                   const at::Tensor& step, const at::Tensor& ids, const at::Tensor& grad,
                                   std::string_view optimizer, double lr, double beta1, double beta2, double eps,
                                   double weight_decay) {
  TableUpdateDims d;
  if (optimizer == "adam") {
    d.optimizer = TableOptimizer::kAdam;
  } else if (optimizer == "rowwise_adagrad") {
    d.optimizer = TableOptimizer::kRowwiseAdagrad;
  } else {
    TORCH_CHECK_VALUE(optimizer == "sgd", "neumf_fast: optimizer must be one of ('sgd', 'adam', "
                      "'rowwise_adagrad'), got '", std::string(optimizer), "'");
  }
  TORCH_CHECK_TYPE(is_float_dtype(table.scalar_type()), "neumf_fast: table must be float, got ",
                   py_dtype(table.scalar_type()));
  TORCH_CHECK_VALUE(table.dim() == 2 && table.is_contiguous(), "neumf_fast: table must be a contiguous [R, D], got ",
                    table.sizes());
  d.rows = table.size(0);
  d.dim = table.size(1);
  const auto device = table.device();
  TORCH_CHECK_TYPE(is_index_dtype(ids.scalar_type()), "neumf_fast: ids must be int32/int64, got ",
                   py_dtype(ids.scalar_type()));
  TORCH_CHECK_VALUE(ids.dim() == 2, "neumf_fast: ids must be [M, K], got ", ids.sizes());
  d.groups = ids.size(0);
  d.per_group = ids.size(1);
  TORCH_CHECK_VALUE(grad.dim() == 2 && grad.size(0) == d.groups && grad.size(1) == d.dim, "neumf_fast: grad must be [",
                    d.groups, ", ", d.dim, "] (one row per row of ids), got ", grad.sizes());
  TORCH_CHECK_TYPE(grad.scalar_type() == table.scalar_type(), "neumf_fast: grad has dtype ",
                   py_dtype(grad.scalar_type()), " but table has ", py_dtype(table.scalar_type()));
  const auto acc = at::toOpMathType(table.scalar_type());
  auto check_state = [&](const at::Tensor& t, const char* name, bool used, at::IntArrayRef shape) {
    if (!used) {
      TORCH_CHECK_VALUE(t.numel() == 0, "neumf_fast: ", name, " must be empty for optimizer '",
                        std::string(optimizer), "', got ", t.sizes());
      return;
    }
    TORCH_CHECK_TYPE(t.scalar_type() == acc, "neumf_fast: ", name, " must be ", py_dtype(acc), " for a ",
                     py_dtype(table.scalar_type()), " table, got ", py_dtype(t.scalar_type()));
    TORCH_CHECK_VALUE(t.sizes() == shape && t.is_contiguous(), "neumf_fast: ", name, " must be a contiguous ",
                      shape, ", got ", t.sizes());
  };
  const bool adam = d.optimizer == TableOptimizer::kAdam;
  check_state(moment1, "moment1", adam, table.sizes());
  check_state(moment2, "moment2", d.optimizer != TableOptimizer::kSgd,
              adam ? table.sizes() : at::IntArrayRef(table.sizes().data(), 1));
  TORCH_CHECK_TYPE(step.scalar_type() == at::kLong, "neumf_fast: step must be int64, got ",
                   py_dtype(step.scalar_type()));
  TORCH_CHECK_VALUE(step.numel() == 1, "neumf_fast: step must hold one count, got ", step.sizes());
  for (const auto& [t, name] : {std::pair{&moment1, "moment1"}, {&moment2, "moment2"}, {&step, "step"},
                                {&ids, "ids"}, {&grad, "grad"}}) {
    TORCH_CHECK_VALUE(t->device() == device, "neumf_fast: ", name, " is on ", t->device(), " but table is on ", device);
  }
  TORCH_CHECK_VALUE(lr >= 0 && weight_decay >= 0, "neumf_fast: lr and weight_decay must be >= 0, got ", lr, " and ",
                    weight_decay);
  TORCH_CHECK_VALUE(eps > 0 && beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1,
                    "neumf_fast: need eps > 0 and betas in [0, 1), got eps=", eps, ", betas=(", beta1, ", ", beta2, ")");
  return d;
}

TORCH_LIBRARY(neumf_fast, m) {
  m.def(
      "fused_input(Tensor user, Tensor? user_mask, Tensor? user_table, int? padding_idx, Tensor item, "
      "Tensor? item_table, Tensor? user_weight, Tensor? user_bias, Tensor? item_weight, Tensor? item_bias, "
      "int h_mf, str mode, bool save=True) -> (Tensor gmf, Tensor mlp_in, Tensor pooled_user, Tensor pooled_item, "
      "Tensor mf_user, Tensor mf_item)");
  m.def(
      "fused_input_backward(Tensor grad_gmf, Tensor grad_mlp_in, Tensor user, Tensor? user_mask, "
      "Tensor? user_table, int? padding_idx, Tensor item, Tensor? item_table, Tensor? user_weight, "
      "Tensor? user_bias, Tensor? item_weight, Tensor? item_bias, int h_mf, str mode, Tensor pooled_user, "
      "Tensor pooled_item, Tensor mf_user, Tensor mf_item, bool[6] output_mask) -> (Tensor grad_user_source, "
      "Tensor grad_item_source, Tensor grad_user_weight, Tensor grad_user_bias, Tensor grad_item_weight, "
      "Tensor grad_item_bias)");
  // One optimizer step on the rows of `table` that `ids` names (neumf_fast/reference.py:
  // table_update_); mutates the table, its state and its step count.
  m.def(
      "table_update_(Tensor(a!) table, Tensor(b!) moment1, Tensor(c!) moment2, Tensor(d!) step, Tensor ids, "
      "Tensor grad, int? padding_idx, str optimizer, float lr, float beta1, float beta2, float eps, "
      "float weight_decay) -> ()");
}

}  // namespace neumf_fast

// The shared library is imported as the Python module neumf_fast._C, which runs the
// TORCH_LIBRARY registrations above as a side effect.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
