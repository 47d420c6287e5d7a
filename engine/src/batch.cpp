#include "cobatch/engine/batch.hpp"

#include "batch_check.hpp"
#include "message.hpp"

#include <limits>
#include <string>

namespace cobatch::engine {
namespace detail {

// One pass over the requests; order of checks is chosen so that the first
// message names the root cause (sizes before values, offsets before lengths).
fault check_batch(const batch_view& b, batch_shape& shape, std::string* detail) {
  const std::size_t reqs = b.seq_lens.size();
  if (b.query_start_loc.empty() || reqs == 0) {
    return fail(detail, errc::empty_batch, "batch has no requests (query_start_loc has ",
                b.query_start_loc.size(), " entries, seq_lens has ", reqs, ")");
  }
  if (reqs > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max() - 1)) {
    return fail(detail, errc::overflow, "batch has ", reqs,
                " requests; int32 offsets index at most 2147483646");
  }
  if (b.query_start_loc.size() != reqs + 1) {
    return fail(detail, errc::length_mismatch, "query_start_loc has ", b.query_start_loc.size(),
                " entries; seq_lens has ", reqs, " so it needs ", reqs + 1);
  }
  if (b.num_tokens < 0) {
    return fail(detail, errc::negative_length, "num_tokens=", b.num_tokens, " is negative");
  }
  if (b.num_tokens == 0) {
    return fail(detail, errc::empty_batch, "num_tokens=0: a batch needs at least one token");
  }
  if (b.query_start_loc[0] != 0) {
    return fail(detail, errc::invalid_argument, "query_start_loc[0]=", b.query_start_loc[0],
                " must be 0");
  }
  if (b.query_start_loc[reqs] != b.num_tokens) {
    return fail(detail, errc::length_mismatch, "query_start_loc[", reqs, "]=",
                b.query_start_loc[reqs], " differs from num_tokens=", b.num_tokens);
  }
  std::int32_t min_q = std::numeric_limits<std::int32_t>::max();
  std::int32_t max_q = 0;
  const std::int32_t* loc = b.query_start_loc.data();
  const std::int32_t* seq = b.seq_lens.data();
  for (std::size_t i = 0; i < reqs; ++i) {
    if (loc[i + 1] < loc[i]) {
      return fail(detail, errc::negative_length, "query_start_loc[", i + 1, "]=", loc[i + 1],
                  " is less than query_start_loc[", i, "]=", loc[i]);
    }
    // loc[0] is 0 and every offset so far is at least the one before, so both
    // operands are non-negative and the difference cannot overflow.
    const std::int32_t q = loc[i + 1] - loc[i];
    if (seq[i] < q) {
      if (seq[i] < 0) {
        return fail(detail, errc::negative_length, "seq_lens[", i, "]=", seq[i], " is negative");
      }
      return fail(detail, errc::length_mismatch, "seq_lens[", i, "]=", seq[i],
                  " is less than request ", i, "'s query length ", q,
                  " (seq_len counts this step's tokens too)");
    }
    min_q = q < min_q ? q : min_q;
    max_q = q > max_q ? q : max_q;
  }
  shape = batch_shape{static_cast<std::int32_t>(reqs), b.num_tokens, min_q, max_q};
  return {};
}

}  // namespace detail

using detail::fault;

batch_shape validate_batch(const batch_view& batch) {
  batch_shape shape;
  std::string text;
  if (const fault f = detail::check_batch(batch, shape, &text)) detail::raise(f, "validate_batch", text);
  return shape;
}

batch_shape validate_batch(const batch_view& batch, std::error_code& ec) noexcept {
  batch_shape shape;
  const fault f = detail::check_batch(batch, shape, nullptr);
  ec = f ? make_error_code(f.code) : std::error_code{};
  return f ? batch_shape{} : shape;
}

}  // namespace cobatch::engine
