// Emulator stand-in for <cuda_bf16.h>: the storage type and round-to-nearest conversion.
#pragma once
#include <c10/util/BFloat16.h>

struct __nv_bfloat16_raw {
  unsigned short x;
};
struct __nv_bfloat16 {
  unsigned short x;
  __nv_bfloat16() = default;
  __nv_bfloat16(__nv_bfloat16_raw r) : x(r.x) {}
};
inline __nv_bfloat16 __float2bfloat16_rn(float v) { return __nv_bfloat16(__nv_bfloat16_raw{c10::BFloat16(v).x}); }
inline float emu_to_float(__nv_bfloat16 h) { return static_cast<float>(c10::BFloat16(h.x, c10::BFloat16::from_bits())); }
