// The table gradient of the CPU kernels (csrc/cpu/fused_input_cpu.cpp): deterministic sums of
// each row's contributions, by scatter or row by row.
#pragma once

#include "rows.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <optional>
#include <vector>

namespace neumf_fast::cpu {

using at::Tensor;

// dst[0:n] = sum_j scale[b_j] * src[b_j * n : (b_j + 1) * n] over b_j = rows[0..k), in op-math: an
// fmadd chain from zero in j order, rounded once to dst's type.  Blocked over n so that the
// partial sums stay in registers: dst is written once.
template <typename scalar_t>
inline void weighted_sum_store(scalar_t* dst, const opmath_t<scalar_t>* src, const opmath_t<scalar_t>* scale,
                               const int64_t* rows, int64_t k, int64_t n, opmath_t<scalar_t>* scratch) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  constexpr bool direct = std::is_same_v<scalar_t, acc_t>;
  acc_t* out = direct ? reinterpret_cast<acc_t*>(dst) : scratch;
  int64_t i = 0;
  for (; i + 4 * V <= n; i += 4 * V) {
    Vec a0(0), a1(0), a2(0), a3(0);
    for (int64_t j = 0; j < k; ++j) {
      const Vec w(scale[rows[j]]);
      const acc_t* x = src + rows[j] * n + i;
      a0 = at::vec::fmadd(w, Vec::loadu(x), a0);
      a1 = at::vec::fmadd(w, Vec::loadu(x + V), a1);
      a2 = at::vec::fmadd(w, Vec::loadu(x + 2 * V), a2);
      a3 = at::vec::fmadd(w, Vec::loadu(x + 3 * V), a3);
    }
    a0.store(out + i);
    a1.store(out + i + V);
    a2.store(out + i + 2 * V);
    a3.store(out + i + 3 * V);
  }
  for (; i < n; i += V) {
    const int64_t width = std::min<int64_t>(V, n - i);
    Vec a(0);
    for (int64_t j = 0; j < k; ++j) a = at::vec::fmadd(Vec(scale[rows[j]]), Vec::loadu(src + rows[j] * n + i, width), a);
    a.store(out + i, width);
  }
  if constexpr (!direct) scale_store_row<scalar_t>(dst, scratch, acc_t(1), n);
}

// A table gradient up to this many op-math bytes is zeroed and then scattered into (it stays in
// cache, so the scatter's reads are cheap); a larger one is written once, row by row.  On the dev
// CPU, a 966 KB gradient (6040 x 40, ML-1M's user table) took 10% longer written row by row, and
// a 25.6 MB one (100k x 64) 2.5-3x less time.
constexpr int64_t kScatteredTableBytes = int64_t{2} << 20;

// The gradient of a table read at rows ids[p] (p over B*L, skipping padding): row r is the sum,
// over the positions p with ids[p] == r in position order, of scale[p / L] * grad_pooled[p / L]
// (an fmadd chain from zero, accumulated in op-math), and zero for a row nobody read.  Each task
// owns a range of rows [r0, r1), so the result does not depend on the thread count.  Two orders
// of work give the same sums bit for bit:
// - scatter (small tables): zero the range, then add each position's row into it in turn;
// - by row (large tables): bucket the range's positions by row with a counting sort (which keeps
//   position order), then write each row once, in order, from its contributions.  grad_pooled
//   ([B, dim]) stays in cache and the gradient, as large as the table, is written once and never
//   read back, where a scatter would write it twice and read it back at random.
// All offsets are int64.
template <typename scalar_t, typename index_t>
Tensor table_grad(const Tensor& ids_t, int64_t L, const std::optional<int64_t>& padding_idx, int64_t rows,
                  int64_t dim, const Tensor& grad_pooled, const std::vector<opmath_t<scalar_t>>& scale) {
  using acc_t = opmath_t<scalar_t>;
  constexpr bool direct = std::is_same_v<scalar_t, acc_t>;
  const bool by_row = rows * dim * static_cast<int64_t>(sizeof(acc_t)) > kScatteredTableBytes;
  Tensor out = at::empty({rows, dim}, ids_t.options().dtype(c10::CppTypeToScalarType<scalar_t>::value));
  scalar_t* o = out.data_ptr<scalar_t>();
  // A reduced dtype's scatter accumulates in an op-math buffer and rounds once at the end.
  Tensor buf;
  if (!direct && !by_row) buf = at::empty({rows, dim}, ids_t.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* acc = by_row ? nullptr : direct ? reinterpret_cast<acc_t*>(o) : buf.data_ptr<acc_t>();
  const index_t* ids = ids_t.data_ptr<index_t>();
  const acc_t* gp = grad_pooled.data_ptr<acc_t>();
  const int64_t positions = ids_t.numel();
  const bool has_pad = padding_idx.has_value();
  const int64_t pad = padding_idx.value_or(0);
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(rows, at::get_num_threads()));
  const bool stream = by_row && std::is_same_v<scalar_t, float> && out.nbytes() > kStreamedBytes;
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<int64_t> start, next, order;
    std::vector<acc_t> scratch(by_row && (!direct || stream) ? dim : 0);
    // row r from its k contributions rows_of_r[0..k); n_rows rows of zeros from row r
    auto write_row = [&](int64_t r, const int64_t* rows_of_r, int64_t k) {
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (stream) {
          weighted_sum_store<float>(scratch.data(), gp, scale.data(), rows_of_r, k, dim, nullptr);
          return stream_row(o + r * dim, scratch.data(), dim);
        }
      }
      weighted_sum_store<scalar_t>(o + r * dim, gp, scale.data(), rows_of_r, k, dim, scratch.data());
    };
    auto write_zeros = [&](int64_t r, int64_t n_rows) {
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (stream) return stream_zero(o + r * dim, n_rows * dim);
      }
      fill_zero(o + r * dim, n_rows * dim);
    };
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = rows * t / tasks, r1 = rows * (t + 1) / tasks;
      auto mine = [&](int64_t id) { return id >= r0 && id < r1 && !(has_pad && id == pad); };
      if (!by_row) {
        fill_zero(acc + r0 * dim, (r1 - r0) * dim);
        for (int64_t p = 0; p < positions; ++p) {
          const auto id = static_cast<int64_t>(ids[p]);
          if (!mine(id)) continue;
          const int64_t b = L == 1 ? p : p / L;  // (a 64-bit division per position costs)
          axpy_row<acc_t>(acc + id * dim, gp + b * dim, scale[b], dim);
        }
        if constexpr (!direct) {
          for (int64_t r = r0; r < r1; ++r) scale_store_row<scalar_t>(o + r * dim, acc + r * dim, acc_t(1), dim);
        }
        continue;
      }
      // start[r - r0] .. start[r - r0 + 1]: row r's positions in order[], as rows of grad_pooled
      start.assign(r1 - r0 + 1, 0);
      for (int64_t p = 0; p < positions; ++p) {
        const auto id = static_cast<int64_t>(ids[p]);
        if (mine(id)) ++start[id - r0 + 1];
      }
      for (int64_t r = 0; r < r1 - r0; ++r) start[r + 1] += start[r];
      order.resize(start.back());
      next.assign(start.begin(), start.end() - 1);
      for (int64_t p = 0; p < positions; ++p) {
        const auto id = static_cast<int64_t>(ids[p]);
        if (mine(id)) order[next[id - r0]++] = L == 1 ? p : p / L;
      }
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t k = start[r - r0 + 1] - start[r - r0];
        if (k == 0) {  // a run of rows nobody read: zeros, in one fill
          int64_t end = r + 1;
          while (end < r1 && start[end - r0 + 1] == start[end - r0]) ++end;
          write_zeros(r, end - r);
          r = end - 1;
          continue;
        }
        write_row(r, order.data() + start[r - r0], k);
      }
    }
    if (stream) stream_fence();
  });
  return out;
}

}  // namespace neumf_fast::cpu
