// Emulator stand-in for <mma.h> (nvcuda::wmma).  Every lane of the warp holds the whole 16x16
// tile and computes the whole product (the values, not the hardware's register layout, which
// the code under test never looks at beyond elementwise conversion).  Loads and stores check
// the constraints the hardware has: a 256-bit aligned pointer and a leading dimension that is a
// multiple of 16 bytes.  Stores are written by lane 0 only.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "../emu.h"

inline float emu_to_float(float v) { return v; }

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  using element_type = std::conditional_t<std::is_same_v<T, precision::tf32>, float, T>;
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = rows * cols;
  element_type x[num_elements];
};

template <typename P>
inline void check_operand(const P* ptr, unsigned ldm) {
  if (reinterpret_cast<std::uintptr_t>(ptr) % 32 != 0) emu::fail("wmma: pointer not 256-bit aligned");
  if ((ldm * sizeof(P)) % 16 != 0) emu::fail("wmma: leading dimension not a multiple of 16 bytes");
}

template <typename Use, int M, int N, int K, typename T, typename Layout, typename P>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P* ptr, unsigned ldm) {
  check_operand(ptr, ldm);
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int r = 0; r < F::rows; ++r) {
    for (int c = 0; c < F::cols; ++c) {
      f.x[r * F::cols + c] = std::is_same_v<Layout, row_major> ? ptr[r * ldm + c] : ptr[c * ldm + r];
    }
  }
}

template <typename Use, int M, int N, int K, typename T, typename Layout, typename V>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, V value) {
  for (auto& e : f.x) e = value;
}

template <int M, int N, int K, typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
              const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  fragment<accumulator, M, N, K, float> out;
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < N; ++n) {
      float acc = c.x[m * N + n];
      for (int k = 0; k < K; ++k) acc += emu_to_float(a.x[m * K + k]) * emu_to_float(b.x[k * N + n]);
      out.x[m * N + n] = acc;
    }
  }
  d = out;
}

template <int M, int N, int K>
void store_matrix_sync(float* ptr, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  check_operand(ptr, ldm);
  if (threadIdx.x % 32 == 0) {
    for (int r = 0; r < M; ++r) {
      for (int c = 0; c < N; ++c) {
        (layout == mem_row_major ? ptr[r * ldm + c] : ptr[c * ldm + r]) = f.x[r * N + c];
      }
    }
  }
  __shfl_sync(0xffffffffu, 0, 0);  // the warp waits for the store, as the warp-wide op does
}

// TF32: 10 explicit mantissa bits, round to nearest.
inline float __float_to_tf32(float v) {
  std::uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits = (bits + 0x1000u) & ~0x1fffu;
  std::memcpy(&v, &bits, 4);
  return v;
}
}  // namespace wmma
}  // namespace nvcuda
