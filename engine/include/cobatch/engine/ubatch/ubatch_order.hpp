// The order in which the micro-batches of a step take turns
// (ubatch_run_options::turn_order): by priority, or decode before prefill.
//
// Turn order is the order in which micro-batches enqueue their work between
// two switches, so on a shared stream it is the order the device runs it.
// Decode micro-batches are short and latency-bound (every request waits for
// its next token); letting them go first keeps a long prefill micro-batch
// from delaying them (the seed's priority-based micro-batch ordering).
#pragma once

#include <cobatch/engine/ubatch/ubatch_slicing.hpp>

#include <cstdint>
#include <span>
#include <vector>

namespace cobatch::engine {

/// Micro-batch indices by descending priority; equal priorities keep their
/// index order (a stable sort). priorities[k] is micro-batch k's.
std::vector<std::int32_t> order_by_priority(std::span<const std::int32_t> priorities);

/// True when every request of `mb` has at most `decode_query_len` query
/// tokens here (1 for plain decode, 1 + speculative tokens otherwise).
bool is_decode_ubatch(const ubatch& mb, std::int32_t decode_query_len = 1) noexcept;

/// Decode micro-batches of `plan` first, then the others, each group in
/// index order. Throws engine_error (errc::invalid_argument) for
/// decode_query_len < 1.
std::vector<std::int32_t> decode_first_order(const ubatch_plan& plan, std::int32_t decode_query_len = 1);

}  // namespace cobatch::engine
