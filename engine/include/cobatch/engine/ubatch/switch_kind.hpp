// switch_kind: where a micro-batch hands the thread over to the next one, and
// what happens to its streams there (see ubatch_context's switch points).
#pragma once

#include <cstdint>

namespace cobatch::engine {

/// Where a micro-batch hands over to the next one.
enum class switch_kind : std::uint8_t {
  yield,       ///< hand over; streams untouched
  to_comm,     ///< compute -> communication: the comm stream waits for the compute stream's work so far
  to_compute,  ///< communication -> compute: the compute stream waits for the comm stream's work so far
};

}  // namespace cobatch::engine
