// Row helpers of the CPU kernels (csrc/cpu/fused_input_cpu.cpp): vector loops over one row
// of op-math values, and the non-temporal stores of the outputs that cannot stay in cache.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace neumf_fast::cpu {

template <typename T>
using opmath_t = at::opmath_type<T>;

// One vector of op-math values from src[0:size] in its storage type.
template <typename scalar_t>
inline at::vec::Vectorized<opmath_t<scalar_t>> load_opmath(const scalar_t* src) {
  using Vec = at::vec::Vectorized<opmath_t<scalar_t>>;
  if constexpr (std::is_same_v<scalar_t, opmath_t<scalar_t>>) {
    return Vec::loadu(src);
  } else {
    Vec v;
    at::vec::load_to_float<scalar_t>(src, v);
    return v;
  }
}

// acc[0:n] += w * src[0:n], reading src in its storage type and accumulating in op-math.
template <typename scalar_t>
inline void axpy_row(opmath_t<scalar_t>* acc, const scalar_t* src, opmath_t<scalar_t> w, int64_t n) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  const Vec wv(w);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    at::vec::fmadd(wv, load_opmath(src + i), Vec::loadu(acc + i)).store(acc + i);
  }
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    // the tail as one partial vector (widths such as 40 leave 8 of 16 lanes)
    if (i < n) at::vec::fmadd(wv, Vec::loadu(src + i, n - i), Vec::loadu(acc + i, n - i)).store(acc + i, n - i);
    return;
  }
  for (; i < n; ++i) acc[i] += w * static_cast<acc_t>(src[i]);
}

// dst[0:n] = w * src[0:n], rounding once to the storage type.
template <typename scalar_t>
inline void scale_store_row(scalar_t* dst, const opmath_t<scalar_t>* src, opmath_t<scalar_t> w, int64_t n) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  const Vec wv(w);
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    for (; i + Vec::size() <= n; i += Vec::size()) (wv * Vec::loadu(src + i)).store(dst + i);
    if (i < n) (wv * Vec::loadu(src + i, n - i)).store(dst + i, n - i);
    return;
  } else {
    for (; i + 2 * Vec::size() <= n; i += 2 * Vec::size()) {
      auto lo = wv * Vec::loadu(src + i);
      auto hi = wv * Vec::loadu(src + i + Vec::size());
      at::vec::convert_from_float<scalar_t>(lo, hi).store(dst + i);
    }
  }
  for (; i < n; ++i) dst[i] = static_cast<scalar_t>(w * src[i]);
}

// dst[0:n] = a[0:n] * b[0:n]: a in its storage type, b and dst in op-math.
template <typename scalar_t>
inline void mul_row(opmath_t<scalar_t>* dst, const scalar_t* a, const opmath_t<scalar_t>* b, int64_t n) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) (load_opmath(a + i) * Vec::loadu(b + i)).store(dst + i);
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (i < n) (Vec::loadu(a + i, n - i) * Vec::loadu(b + i, n - i)).store(dst + i, n - i);
    return;
  }
  for (; i < n; ++i) dst[i] = static_cast<acc_t>(a[i]) * b[i];
}

template <typename scalar_t>
inline void fill_zero(scalar_t* dst, int64_t n) {
  std::fill(dst, dst + n, scalar_t(0));
}

// out[0:D] = scale * sum_r rows[r][0:D], summing in row order.  Blocked over D so that four
// vector accumulators stay in registers across all rows: x is read once, out written once.
template <typename scalar_t>
inline void sum_rows(opmath_t<scalar_t>* out, const scalar_t* const* rows, int64_t n, int64_t D,
                     opmath_t<scalar_t> scale) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  auto load = [](const scalar_t* p) { return load_opmath(p); };
  const Vec sv(scale);
  int64_t i = 0;
  for (; i + 4 * V <= D; i += 4 * V) {
    Vec a0(0), a1(0), a2(0), a3(0);
    for (int64_t r = 0; r < n; ++r) {
      const scalar_t* p = rows[r] + i;
      a0 += load(p);
      a1 += load(p + V);
      a2 += load(p + 2 * V);
      a3 += load(p + 3 * V);
    }
    (a0 * sv).store(out + i);
    (a1 * sv).store(out + i + V);
    (a2 * sv).store(out + i + 2 * V);
    (a3 * sv).store(out + i + 3 * V);
  }
  for (; i + V <= D; i += V) {
    Vec a(0);
    for (int64_t r = 0; r < n; ++r) a += load(rows[r] + i);
    (a * sv).store(out + i);
  }
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (i < D) {
      Vec a(0);
      for (int64_t r = 0; r < n; ++r) a += Vec::loadu(rows[r] + i, D - i);
      (a * sv).store(out + i, D - i);
    }
    return;
  }
  for (; i < D; ++i) {
    acc_t a(0);
    for (int64_t r = 0; r < n; ++r) a += static_cast<acc_t>(rows[r][i]);
    out[i] = a * scale;
  }
}

// Rows per parallel task so that a task does roughly 32K element updates.
inline int64_t grain_for(int64_t work_per_row) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_row));
}

// One vector of src[i : i + w] (w <= the vector width; the missing lanes are zeros).
template <typename acc_t>
inline at::vec::Vectorized<acc_t> load_part(const acc_t* src, int64_t w) {
  using Vec = at::vec::Vectorized<acc_t>;
  return w == Vec::size() ? Vec::loadu(src) : Vec::loadu(src, w);
}

// dst[0:n] = f(i, w) vector by vector, f giving the op-math values of columns [i, i + w),
// rounded once to dst's type.
template <typename scalar_t, typename F>
inline void store_row(scalar_t* dst, int64_t n, const F& f) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  for (int64_t i = 0; i < n; i += V) {
    const int64_t w = std::min<int64_t>(V, n - i);
    const Vec v = f(i, w);
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      if (w == V) v.store(dst + i);
      else v.store(dst + i, w);
    } else {
      acc_t tmp[V];
      v.store(tmp);
      for (int64_t k = 0; k < w; ++k) dst[i + k] = static_cast<scalar_t>(tmp[k]);
    }
  }
}

// Outputs larger than this are written with non-temporal stores: they cannot stay in cache
// anyway, and a plain store first reads each line it writes (the dense sequence gradient, 21 MB
// at the design shape, and the table gradients, 25.6 MB each for 100k x 64 tables, are the
// largest writes of a step).
constexpr int64_t kStreamedBytes = int64_t{4} << 20;

// dst[0:n] = src[0:n] for fp32, with non-temporal stores where dst is 32-byte aligned and n a
// multiple of 8 (the rows of an aligned tensor of such widths), plain stores otherwise.
inline void stream_row(float* dst, const float* src, int64_t n) {
#if defined(__AVX__)
  if ((reinterpret_cast<uintptr_t>(dst) & 31) == 0 && n % 8 == 0) {
    for (int64_t i = 0; i < n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
    return;
  }
#endif
  std::copy(src, src + n, dst);
}

// dst[0:n] = 0 for fp32, with non-temporal stores from the first 32-byte boundary.
inline void stream_zero(float* dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX__)
  for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 31) != 0; ++i) dst[i] = 0.f;
  for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_setzero_ps());
#endif
  std::fill(dst + i, dst + n, 0.f);
}

inline void stream_fence() {
#if defined(__AVX__)
  _mm_sfence();  // streamed stores are weakly ordered: make them visible before the task ends
#endif
}

}  // namespace neumf_fast::cpu
