// The emulator's runtime counters (emu.h: emu::Counters) as ops, for the tests that count what
// the CUDA host code asks of the runtime: torch.ops.neumf_fast_emu._emu_counters() returns
// [stream syncs, event waits, event queries, attribute queries, device-to-host copies,
// vector atomics].
#include <torch/library.h>

#include <cstdint>
#include <vector>

TORCH_LIBRARY_FRAGMENT(neumf_fast, m) {  // neumf_fast_emu: build.py renames the namespace
  m.def("_emu_counters() -> int[]", [] {
    auto& c = emu::counters();
    return std::vector<int64_t>{c.stream_syncs.load(), c.event_waits.load(), c.event_queries.load(),
                                c.attribute_queries.load(), c.host_copies.load(), emu::vector_atomics().load()};
  });
}
