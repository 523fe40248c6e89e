// Emulator stand-in for <cuda_fp16.h>: the storage type and round-to-nearest conversion.
#pragma once
#include <c10/util/Half.h>

struct __half_raw {
  unsigned short x;
};
struct __half {
  unsigned short x;
  __half() = default;
  __half(__half_raw r) : x(r.x) {}
};
inline __half __float2half_rn(float v) { return __half(__half_raw{c10::Half(v).x}); }
inline float emu_to_float(__half h) { return static_cast<float>(c10::Half(h.x, c10::Half::from_bits())); }
