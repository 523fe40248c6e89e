// Emulator stand-in: never capturing a CUDA graph.
#pragma once
namespace c10::cuda {
enum class CaptureStatus { None, Active };
inline CaptureStatus currentStreamCaptureStatusMayInitCtx() { return CaptureStatus::None; }
}  // namespace c10::cuda
