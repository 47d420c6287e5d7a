// resolve_refs_args: the argument struct of the resolve_refs kernel (the
// entry points are in resolve_refs.hpp). The kernel turns ids that are either
// values or references into a table the device wrote earlier into values, on
// the device. The engine's token references work this way: a decode step's
// input token is the previous step's sampled token, which only the device
// has when the step is enqueued (the host plans step k+1 before step k's
// tokens come back), so the host stages a reference and the device resolves
// it right before the step reads its inputs.
//
// Plain C++17 without other cobatch headers, so that the .cu file that
// implements the kernel includes the very same struct.
#pragma once

#include <cstdint>

namespace cobatch::gpu::kernels {

/// For i < count: dst[i] = src[i] when src[i] >= 0, else table[-1 - src[i]]
/// (0 when that index is not below table_size: the caller validates its
/// references, the kernel only never reads out of bounds). All pointers are
/// device memory of one device; dst may not overlap src or table.
struct resolve_refs_args {
  const std::int32_t* src = nullptr;
  const std::int32_t* table = nullptr;
  std::int32_t* dst = nullptr;
  std::int32_t count = 0;
  std::int32_t table_size = 0;
};

}  // namespace cobatch::gpu::kernels
