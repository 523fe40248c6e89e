// Emulator stand-in: CUDA errors become TORCH_CHECK failures; launches are checked by emu::Launch.
#pragma once
#include <c10/util/Exception.h>
#include <cuda_runtime.h>
#define C10_CUDA_CHECK(expr) TORCH_CHECK((expr) == cudaSuccess, "CUDA call failed: " #expr)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
