// CPU kernel of neumf_fast::table_update_: one row-wise optimizer step, in place.
//
// Math (neumf_fast/reference.py: table_update_ is the spec): each position ids[m, k] other than
// padding_idx gives its row grad[m]; each row present is updated once from the sum of its
// positions' gradients, plus weight_decay * row.  sgd, adam (per-element moments, the table's
// global step for bias correction) and rowwise_adagrad (one accumulator per row).
//
// Work: the positions are sorted by id, stably, so that each row's positions lie together in
// position order: one counting sort where the batch is large beside the table, else fbgemm's
// parallel LSD radix sort (in libtorch on x86; as many passes as the table's row count needs), or
// std::stable_sort where torch has no fbgemm.  Threads split the sorted positions; a thread owns
// every run (one row's positions) that starts in its range, sums the run in op-math in that
// order and updates the row.  The sum, and so the result, does not depend on the thread count.
// Nothing of the table's size is allocated: scratch of 4 M K entries, and the counting sort's
// rows + 2 counts only where rows <= 16 M K.
#include "../ops.h"

#include <ATen/Config.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>
#if __has_include(<fbgemm/Utils.h>)
#include <fbgemm/Utils.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace neumf_fast {
namespace {

struct Hyper {
  double lr, beta1, beta2, eps, weight_decay;
  double step_size;  // adam: lr / (1 - beta1^t)
  double bc2_sqrt;   // adam: sqrt(1 - beta2^t)
};

// Adam on one row.  fp32/fp64 rows in whole at::vec vectors first: the compiler does not vectorise
// std::sqrt (errno), and the scalar loop cost 3.5 ns an element (55 against 20 us for sgd, 256
// rows of 40, one thread).  The tail, and bf16/fp16 rows, take the scalar loop.
template <typename scalar_t, typename acc_t>
void adam_row(scalar_t* w, acc_t* m1, acc_t* m2, const acc_t* g, int64_t dim, const Hyper& h) {
  const acc_t b1 = static_cast<acc_t>(h.beta1), b2 = static_cast<acc_t>(h.beta2);
  const acc_t step_size = static_cast<acc_t>(h.step_size), bc2_sqrt = static_cast<acc_t>(h.bc2_sqrt);
  const acc_t inv_bc2_sqrt = 1 / bc2_sqrt;  // one division an element, not two (a ulp from the spec's)
  const acc_t eps = static_cast<acc_t>(h.eps);
  int64_t j = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    using Vec = at::vec::Vectorized<acc_t>;
    for (; j + Vec::size() <= dim; j += Vec::size()) {
      const Vec gj = Vec::loadu(g + j);
      const Vec m = Vec(b1) * Vec::loadu(m1 + j) + Vec(1 - b1) * gj;
      const Vec v = Vec(b2) * Vec::loadu(m2 + j) + Vec(1 - b2) * gj * gj;
      m.store(m1 + j);
      v.store(m2 + j);
      (Vec::loadu(w + j) - Vec(step_size) * m / (v.sqrt() * Vec(inv_bc2_sqrt) + Vec(eps))).store(w + j);
    }
  }
  for (; j < dim; ++j) {
    const acc_t m = b1 * m1[j] + (1 - b1) * g[j];
    const acc_t v = b2 * m2[j] + (1 - b2) * g[j] * g[j];
    m1[j] = m;
    m2[j] = v;
    w[j] = static_cast<scalar_t>(static_cast<acc_t>(w[j]) - step_size * m / (std::sqrt(v) * inv_bc2_sqrt + eps));
  }
}

// One row: g (the summed gradient, op-math) becomes g + weight_decay * w, then the step.
template <typename scalar_t, typename acc_t>
void update_row(TableOptimizer opt, scalar_t* w, acc_t* m1, acc_t* m2, acc_t* g, int64_t dim, const Hyper& h) {
  const acc_t wd = static_cast<acc_t>(h.weight_decay);
  if (wd != 0) {
    for (int64_t j = 0; j < dim; ++j) g[j] += wd * static_cast<acc_t>(w[j]);
  }
  if (opt == TableOptimizer::kSgd) {
    const acc_t lr = static_cast<acc_t>(h.lr);
    for (int64_t j = 0; j < dim; ++j) w[j] = static_cast<scalar_t>(static_cast<acc_t>(w[j]) - lr * g[j]);
  } else if (opt == TableOptimizer::kAdam) {
    adam_row(w, m1, m2, g, dim, h);
  } else {  // rowwise_adagrad: m2 is the row's one accumulator
    acc_t sq = 0;
    for (int64_t j = 0; j < dim; ++j) sq += g[j] * g[j];
    const acc_t s = *m2 + sq / static_cast<acc_t>(dim);
    *m2 = s;
    const acc_t rate = static_cast<acc_t>(h.lr) / (std::sqrt(s) + static_cast<acc_t>(h.eps));
    for (int64_t j = 0; j < dim; ++j) w[j] = static_cast<scalar_t>(static_cast<acc_t>(w[j]) - rate * g[j]);
  }
}

constexpr int64_t kPrefetch = 16;

// for_write: the row is about to be written (a table row, its state), else only read (a gradient)
template <bool for_write = true, typename T>
void prefetch_row(const T* row, int64_t dim) {
  if (row == nullptr) return;
  for (int64_t b = 0; b < dim * static_cast<int64_t>(sizeof(T)); b += 64) {
    __builtin_prefetch(reinterpret_cast<const char*>(row) + b, for_write ? 1 : 0);
  }
}

// Each position's row as an int64 sort key: its id, or `rows` (sorts last) for a padding
// position.  An id outside [0, rows) raises IndexError naming the first such position's id.
template <typename index_t>
void position_keys(const at::Tensor& ids, int64_t rows, const std::optional<int64_t>& padding_idx, int64_t* key) {
  const int64_t n = ids.numel();
  const index_t* id = ids.data_ptr<index_t>();
  const bool has_pad = padding_idx.has_value();
  const int64_t pad = has_pad ? *padding_idx : 0;
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t v = static_cast<int64_t>(id[p]);
      if (has_pad && v == pad) {
        key[p] = rows;
      } else {
        key[p] = v;
        if (v < 0 || v >= rows) {
          int64_t seen = first_bad.load();
          while (p < seen && !first_bad.compare_exchange_weak(seen, p)) {
          }
        }
      }
    }
  });
  const int64_t bad = first_bad.load();
  TORCH_CHECK_INDEX(bad == std::numeric_limits<int64_t>::max(), "neumf_fast: table_update id ",
                    static_cast<int64_t>(id[bad]), " is out of range for a table with ", rows, " rows");
}

// Sorts the n keys in buf[0, n) (they lie in [0, rows]) with their positions, stably; buf holds
// 4 n entries of scratch.  Returns (keys sorted, the positions in that order), both inside buf.
//
// Fast path: where the table has few rows beside the positions (rows <= kCountingRatio * n), one
// stable counting sort (count, scan, scatter: O(n + rows), one thread) instead of the radix sort,
// whose passes and OpenMP regions cost ~9 ns a key at n = 8192 against ~2 here.  Both give the
// same stable order, so the result is the same.  The counts (rows + 2 int64) are at most
// 2 / dim of an fp32 table, and never allocated where the table dwarfs the batch.
constexpr int64_t kCountingRatio = 16;

// The radix sort's stand-in where torch has no fbgemm; compiled everywhere, so that it builds.
[[maybe_unused]] std::pair<const int64_t*, const int64_t*> comparison_sort(const int64_t* key, int64_t* pos,
                                                                            int64_t* out_key, int64_t n) {
  std::stable_sort(pos, pos + n, [key](int64_t a, int64_t b) { return key[a] < key[b]; });
  for (int64_t p = 0; p < n; ++p) out_key[p] = key[pos[p]];
  return {out_key, pos};
}

std::pair<const int64_t*, const int64_t*> sort_positions(int64_t* buf, int64_t n, int64_t rows) {
  int64_t *key = buf, *pos = buf + n, *out_key = buf + 2 * n, *out_pos = buf + 3 * n;
  if (rows <= kCountingRatio * n) {
    at::Tensor counts = at::zeros({rows + 2}, at::kLong);  // through torch's allocator, as scratch is
    int64_t* start = counts.data_ptr<int64_t>();
    for (int64_t p = 0; p < n; ++p) ++start[key[p] + 1];
    for (int64_t r = 0; r <= rows; ++r) start[r + 1] += start[r];
    for (int64_t p = 0; p < n; ++p) {
      const int64_t slot = start[key[p]]++;
      out_key[slot] = key[p];
      out_pos[slot] = p;
    }
    return {out_key, out_pos};
  }
  for (int64_t p = 0; p < n; ++p) pos[p] = p;
#if __has_include(<fbgemm/Utils.h>)
  const auto [k, v] = fbgemm::radix_sort_parallel(key, pos, out_key, out_pos, n, rows);
  return {k, v};  // whichever pair of buffers the last pass wrote
#else
  return comparison_sort(key, pos, out_key, n);
#endif
}

void table_update_cpu(const at::Tensor& table, const at::Tensor& moment1, const at::Tensor& moment2,
                      const at::Tensor& step, const at::Tensor& ids_in, const at::Tensor& grad_in,
                      std::optional<int64_t> padding_idx, c10::string_view optimizer, double lr, double beta1,
                      double beta2, double eps, double weight_decay) {
  const auto d = check_table_update(table, moment1, moment2, step, ids_in, grad_in, optimizer, lr, beta1, beta2, eps,
                                    weight_decay);
  const at::Tensor ids = ids_in.contiguous(), grad = grad_in.contiguous();
  const int64_t t = ++step.data_ptr<int64_t>()[0];
  Hyper h{lr, beta1, beta2, eps, weight_decay, lr / (1 - std::pow(beta1, static_cast<double>(t))),
          std::sqrt(1 - std::pow(beta2, static_cast<double>(t)))};
  const int64_t n = ids.numel();
  if (n == 0 || d.dim == 0) return;
  // one scratch allocation: keys, positions, and the sort's output
  const at::Tensor scratch = at::empty({4 * n}, ids.options().dtype(at::kLong));
  int64_t* buf = scratch.data_ptr<int64_t>();
  if (ids.scalar_type() == at::kLong) {
    position_keys<int64_t>(ids, d.rows, padding_idx, buf);
  } else {
    position_keys<int32_t>(ids, d.rows, padding_idx, buf);
  }
  const auto [sorted, order] = sort_positions(buf, n, d.rows);
  const int64_t dim = d.dim, per_group = d.per_group, rows = d.rows;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, table.scalar_type(), "table_update_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* w = table.data_ptr<scalar_t>();
    const scalar_t* g = grad.data_ptr<scalar_t>();
    acc_t* m1 = moment1.numel() ? moment1.data_ptr<acc_t>() : nullptr;
    acc_t* m2 = moment2.numel() ? moment2.data_ptr<acc_t>() : nullptr;
    const int64_t m2_stride = d.optimizer == TableOptimizer::kAdam ? dim : 1;
    // the grad row of sorted position q (a 64-bit division costs ~40 cycles: skipped for K = 1)
    const auto grad_row = [&](int64_t q) { return per_group == 1 ? order[q] : order[q] / per_group; };
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> sum(dim);
      int64_t p = begin;
      while (p > 0 && p < n && sorted[p] == sorted[p - 1]) ++p;  // a run that started before: its owner's
      while (p < end && sorted[p] < rows) {
        const int64_t row = sorted[p];
        // The rows come in ascending but scattered order, cold after a step's other work: fetch
        // the row (and its state) a few positions on while this one is summed and updated.
        const int64_t ahead = sorted[std::min(p + kPrefetch, n - 1)];
        if (ahead < rows) {
          prefetch_row(w + ahead * dim, dim);
          if (m1 != nullptr) prefetch_row(m1 + ahead * dim, dim);
          if (m2 != nullptr) prefetch_row(m2 + ahead * m2_stride, m2_stride);
        }
        std::fill(sum.begin(), sum.end(), acc_t(0));
        for (; p < n && sorted[p] == row; ++p) {
          // a run's positions lie scattered over grad: fetch the one a few positions on
          prefetch_row<false>(g + grad_row(std::min(p + kPrefetch, n - 1)) * dim, dim);
          const scalar_t* src = g + grad_row(p) * dim;
          for (int64_t j = 0; j < dim; ++j) sum[j] += static_cast<acc_t>(src[j]);
        }
        update_row(d.optimizer, w + row * dim, m1 ? m1 + row * dim : nullptr, m2 ? m2 + row * m2_stride : nullptr,
                   sum.data(), dim, h);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(neumf_fast, CPU, m) { m.impl("table_update_", &table_update_cpu); }

}  // namespace neumf_fast
