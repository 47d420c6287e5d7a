// One step's batch as vLLM's attention metadata describes it, borrowed from
// the caller, and the validation every planner runs on it before any work.
#pragma once

#include <cobatch/engine/error.hpp>

#include <cstdint>
#include <span>
#include <system_error>

namespace cobatch::engine {

/// A borrowed view of one step's batch. Nothing is copied: the spans must
/// outlive every use of the view.
///
/// The layout is vLLM's, so that buffers prepared for attention backends can
/// be passed as they are:
/// - `query_start_loc` holds num_reqs + 1 offsets into the step's tokens:
///   request i owns tokens [query_start_loc[i], query_start_loc[i+1]). The
///   first is 0, they never decrease, the last equals `num_tokens`.
/// - `seq_lens[i]` is request i's context length *including* the tokens it
///   schedules in this step, so seq_lens[i] >= its query length.
/// - `num_tokens` is the total the scheduler claims; it is stated separately
///   (rather than read from the last offset) so that a mismatch between the
///   two is caught instead of trusted.
///
/// Requests with zero query tokens are allowed (vLLM pads request counts for
/// graph capture with such requests); a batch with no tokens at all is not.
struct batch_view {
  std::span<const std::int32_t> query_start_loc;
  std::span<const std::int32_t> seq_lens;
  std::int32_t num_tokens = 0;

  /// Number of requests as the caller laid it out (seq_lens decides, since
  /// query_start_loc has one more entry). Meaningful once validated.
  std::int32_t num_reqs() const noexcept { return static_cast<std::int32_t>(seq_lens.size()); }

  /// Query tokens request i schedules this step. Unchecked; validate first.
  std::int32_t query_len(std::int32_t i) const noexcept {
    return query_start_loc[static_cast<std::size_t>(i) + 1] - query_start_loc[static_cast<std::size_t>(i)];
  }
};

/// What validation learns in its single pass, so that planners need not walk
/// the requests again to find, for example, whether a batch is pure decode.
struct batch_shape {
  std::int32_t num_reqs = 0;
  std::int32_t num_tokens = 0;
  std::int32_t min_query_len = 0;
  std::int32_t max_query_len = 0;

  /// True when every request schedules exactly `query_len` tokens: vLLM's
  /// "uniform decode" (query_len is 1, or 1 + speculative tokens).
  constexpr bool is_uniform(std::int32_t query_len) const noexcept {
    return num_reqs > 0 && min_query_len == query_len && max_query_len == query_len;
  }
};

/// Checks `batch` and describes it. Throws engine_error naming the first
/// offending value:
/// - errc::empty_batch: no requests, or no tokens;
/// - errc::length_mismatch: query_start_loc does not have num_reqs + 1
///   entries, its last entry differs from num_tokens, or a seq_len is shorter
///   than its request's query;
/// - errc::negative_length: a negative num_tokens or seq_len, or an offset
///   smaller than the one before it (a negative query length);
/// - errc::invalid_argument: query_start_loc[0] is not 0;
/// - errc::overflow: more requests than int32 offsets can index.
batch_shape validate_batch(const batch_view& batch);

/// As above, but reports failure through `ec` (and returns a zero shape)
/// instead of throwing. The detail message is not built on this path.
batch_shape validate_batch(const batch_view& batch, std::error_code& ec) noexcept;

}  // namespace cobatch::engine
