// dcp: decode context parallelism. A request's KV tokens are spread over the
// ranks of a DCP group in blocks of `interleave` tokens (vLLM's
// dcp_kv_cache_interleave_size): global token t lives on rank
// (t / interleave) mod world, at local position
// (t / (interleave * world)) * interleave + t mod interleave. Every rank
// computes attention of all query tokens against its own tokens, giving a
// partial output and LSE; the partials are then merged over the communicator
// by one of two strategies.
#pragma once

#include <cobatch/engine/error.hpp>

#include <cstdint>
#include <system_error>

namespace cobatch::engine {

/// Where this rank sits in its DCP group and how tokens are dealt out.
struct dcp_layout {
  std::int32_t world = 1;
  std::int32_t rank = 0;
  std::int32_t interleave = 1;

  /// The rank holding global token t.
  constexpr std::int32_t owner(std::int64_t t) const noexcept {
    return static_cast<std::int32_t>((t / interleave) % world);
  }
  /// Tokens of a sequence of `len` tokens that rank `r` holds.
  constexpr std::int64_t local_length(std::int64_t len, std::int32_t r) const noexcept {
    const std::int64_t stride = static_cast<std::int64_t>(interleave) * world;
    const std::int64_t full = len / stride;
    const std::int64_t rest = len - full * stride - static_cast<std::int64_t>(r) * interleave;
    return full * interleave + (rest <= 0 ? 0 : (rest < interleave ? rest : interleave));
  }
  constexpr std::int64_t local_length(std::int64_t len) const noexcept { return local_length(len, rank); }
  /// This rank's local position of global token t (which it must own).
  constexpr std::int64_t local_position(std::int64_t t) const noexcept {
    return (t / (static_cast<std::int64_t>(interleave) * world)) * interleave + t % interleave;
  }
  /// The global token at this rank's local position l.
  constexpr std::int64_t global_position(std::int64_t l) const noexcept {
    return ((l / interleave) * world + rank) * interleave + l % interleave;
  }
};

/// Checks world >= 1, 0 <= rank < world, interleave >= 1. Throws engine_error
/// (errc::invalid_argument) naming the value; `api` prefixes the message.
void validate_dcp_layout(const dcp_layout& layout, const char* api);
void validate_dcp_layout(const dcp_layout& layout, std::error_code& ec) noexcept;

/// How the partial outputs of a DCP group become the final output.
enum class dcp_merge {
  /// All-gather of the partial outputs and LSEs, then an N-way merge on every
  /// rank: every rank ends with the whole output, all heads. Moves
  /// world x tokens x heads x head_dim floats per rank.
  all_gather,
  /// vLLM's cp_lse_ag_out_rs: all-gather of the LSEs only, a local correction
  /// of this rank's partial output (scaled by exp(lse_local - lse_global)),
  /// then a reduce-scatter (sum) over heads: rank r ends with heads
  /// [r * heads / world, (r + 1) * heads / world) of every token. Needs heads
  /// divisible by world; moves about 1/world of all_gather's output bytes.
  lse_all_gather_reduce_scatter,
};

constexpr const char* name_of(dcp_merge m) noexcept {
  switch (m) {
    case dcp_merge::all_gather: return "all_gather";
    case dcp_merge::lse_all_gather_reduce_scatter: return "lse_all_gather_reduce_scatter";
  }
  return "unknown";
}

}  // namespace cobatch::engine
