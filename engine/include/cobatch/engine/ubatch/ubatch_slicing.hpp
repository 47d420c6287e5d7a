// Splitting one step's batch into micro-batches, so that one micro-batch's
// communication can overlap another's compute (vLLM's dual-batch overlap,
// SGLang's two-batch overlap). Pure CPU planning: it decides the cuts and
// builds each micro-batch's attention metadata; inputs are viewed, not copied.
#pragma once

#include <cobatch/engine/batch.hpp>
#include <cobatch/engine/error.hpp>
#include <cobatch/engine/ubatch/token_rows.hpp>

#include <cstdint>
#include <span>
#include <system_error>
#include <vector>

namespace cobatch::engine {

/// Where cuts may fall.
enum class split_mode : std::uint8_t {
  /// Equal token slots: each micro-batch gets ceil(padded_tokens / N) slots,
  /// the last one the rest. A request that straddles a cut appears in both
  /// micro-batches (vLLM's behaviour).
  token_balanced,
  /// Cuts only between requests, placed to balance token sums, so that no
  /// request is split (SGLang's two-batch overlap). Where that leaves the
  /// micro-batches too uneven (see slice_policy::min_request_aligned_share),
  /// the token-balanced cut is used instead.
  request_aligned,
};

/// Why a plan has the shape it has. Everything but `split` means the plan
/// holds one micro-batch: the whole batch, padded.
enum class split_outcome : std::uint8_t {
  split,                    ///< N micro-batches as asked
  single_requested,         ///< N was 1
  below_decode_threshold,   ///< a uniform decode batch with fewer tokens than the decode threshold
  below_prefill_threshold,  ///< any other batch with fewer tokens than the prefill threshold
  empty_last_ubatch,   ///< the cuts would leave the last micro-batch without real tokens
};

/// Smallest batches worth splitting: below these, the per-micro-batch
/// overhead outweighs the overlap. Defaults are vLLM's
/// (dbo_decode_token_threshold, dbo_prefill_token_threshold).
struct ubatch_thresholds {
  std::int32_t decode_tokens = 32;
  std::int32_t prefill_tokens = 512;
  /// Query length of every request in a "uniform decode" batch: 1, or
  /// 1 + the number of speculative tokens.
  std::int32_t uniform_decode_query_len = 1;
};

/// How to split: configuration that stays the same from step to step.
struct slice_policy {
  split_mode mode = split_mode::token_balanced;
  ubatch_thresholds thresholds{};
  /// Request-aligned cuts are kept only if the smallest micro-batch holds at
  /// least this share of the tokens for N = 2, i.e. at least 2 * share / N of
  /// them for N micro-batches (96% of an even share at the default). SGLang's
  /// tbo_token_distribution_threshold; 0 keeps every feasible aligned cut.
  /// Must be within [0, 0.5].
  double min_request_aligned_share = 0.48;
};

/// What to split this step: N and the padded token count, which comes from
/// the graph capture-size ladder and so differs from step to step.
struct slice_request {
  std::int32_t num_ubatches = 0;
  std::int32_t padded_tokens = 0;
};

/// One micro-batch of a plan, as read from it. The spans point into the plan.
struct ubatch {
  /// Real tokens [token_begin, token_end) of the batch.
  std::int32_t token_begin = 0;
  std::int32_t token_end = 0;
  /// Requests [req_begin, req_end) of the batch that have tokens here (a
  /// straddling request is counted in each micro-batch it reaches).
  std::int32_t req_begin = 0;
  std::int32_t req_end = 0;
  /// Token slots including padding; >= real_tokens(). Slots of consecutive
  /// micro-batches are consecutive, starting at token_begin.
  std::int32_t padded_tokens = 0;
  /// This micro-batch's own offsets (first 0, last real_tokens()) and context
  /// lengths, req_end - req_begin of them: the batch's, with a straddling
  /// request's tokens outside this micro-batch removed from its query and,
  /// where they come after it, from its seq_len.
  std::span<const std::int32_t> query_start_loc;
  std::span<const std::int32_t> seq_lens;
  /// The same metadata padded for a graph captured for padded_reqs()
  /// requests: in a uniform-decode batch (every query uniform_decode_query_len
  /// long) the padding rows count as ceil(padding() / query_len) empty
  /// requests, with query_start_loc repeating its last offset (query length
  /// 0, keeping it non-decreasing as attention kernels require) and seq_len
  /// 0. They extend query_start_loc and seq_lens, which are their prefixes;
  /// in any other batch they are equal to them.
  std::span<const std::int32_t> padded_query_start_loc;
  std::span<const std::int32_t> padded_seq_lens;

  constexpr std::int32_t real_tokens() const noexcept { return token_end - token_begin; }
  constexpr std::int32_t padding() const noexcept { return padded_tokens - real_tokens(); }
  constexpr std::int32_t num_reqs() const noexcept { return req_end - req_begin; }
  /// Requests including the empty ones that pad it; >= num_reqs().
  constexpr std::int32_t padded_reqs() const noexcept { return static_cast<std::int32_t>(padded_seq_lens.size()); }
  /// This micro-batch's metadata as a batch of its own.
  batch_view as_batch() const noexcept { return {query_start_loc, seq_lens, real_tokens()}; }
  /// As above with the padding requests: what a graph captured for
  /// padded_reqs() requests replays with.
  batch_view as_padded_batch() const noexcept { return {padded_query_start_loc, padded_seq_lens, real_tokens()}; }
};

namespace detail {
struct plan_builder;
}

/// The result of slicing: owns every micro-batch's metadata in one arena so
/// that a plan costs two allocations however many micro-batches it has, and
/// none when a plan is reused.
class ubatch_plan {
 public:
  ubatch_plan() = default;

  /// Micro-batches in the plan: N when split(), else 1. 0 only for a
  /// default-constructed plan or after a failed slice.
  std::int32_t size() const noexcept { return static_cast<std::int32_t>(entries_.size()); }
  bool empty() const noexcept { return entries_.empty(); }
  bool split() const noexcept { return outcome_ == split_outcome::split; }
  split_outcome outcome() const noexcept { return outcome_; }
  /// The mode the cuts were made in: token_balanced where request_aligned
  /// was asked for but fell back.
  split_mode mode() const noexcept { return mode_; }
  split_mode requested_mode() const noexcept { return requested_mode_; }
  std::int32_t num_tokens() const noexcept { return num_tokens_; }
  std::int32_t padded_tokens() const noexcept { return padded_tokens_; }

  /// Micro-batch k, unchecked (as vector's operator[]).
  ubatch operator[](std::int32_t k) const noexcept;
  /// Micro-batch k; throws engine_error (errc::invalid_argument) naming k and
  /// size() when out of range.
  ubatch at(std::int32_t k) const;

 private:
  friend struct detail::plan_builder;
  struct entry {
    std::int32_t token_begin, token_end, req_begin, req_end, padded_tokens;
    std::int32_t empty_reqs;    // requests that pad it (uniform decode only)
    std::int32_t arena_offset;  // padded query_start_loc, then padded seq_lens
  };
  std::vector<entry> entries_;
  std::vector<std::int32_t> arena_;
  split_outcome outcome_ = split_outcome::single_requested;
  split_mode mode_ = split_mode::token_balanced;
  split_mode requested_mode_ = split_mode::token_balanced;
  std::int32_t num_tokens_ = 0;
  std::int32_t padded_tokens_ = 0;
};

/// Splits `batch` into request.num_ubatches micro-batches, or explains
/// in the plan's outcome() why it does not (the plan then holds the whole
/// batch as one micro-batch, so that callers run one code path).
///
/// All input is checked before any work; engine_error carries:
/// - errc::invalid_argument: N < 1, padded_tokens < num_tokens, or a policy
///   value out of range;
/// - errc::too_many_ubatches: N > num_tokens;
/// - errc::negative_length: a negative threshold;
/// - errc::unknown_mode: a split_mode outside the enumeration;
/// - any error of validate_batch.
ubatch_plan slice_batch(const batch_view& batch, const slice_request& request,
                        const slice_policy& policy = {});

/// As above, into `plan`, reusing its storage (no allocation once it has
/// held a plan at least as large).
void slice_batch(const batch_view& batch, const slice_request& request, const slice_policy& policy,
                 ubatch_plan& plan);

/// As above, reporting failure through `ec` (and leaving `plan` empty)
/// instead of throwing. Only allocation failure still throws.
void slice_batch(const batch_view& batch, const slice_request& request, const slice_policy& policy,
                 ubatch_plan& plan, std::error_code& ec);

/// A micro-batch given by hand: tokens [token_begin, token_end) and the
/// requests [req_begin, req_end) that have tokens there (the seed's
/// UBatchSlice.from_range).
struct ubatch_range {
  std::int32_t token_begin = 0;
  std::int32_t token_end = 0;
  std::int32_t req_begin = 0;
  std::int32_t req_end = 0;
};

/// A plan whose cuts are given rather than chosen: for a caller that places
/// cuts itself (to match another rank's split, or a layout it owns). The
/// result is a plan like slice_batch's, with each micro-batch's metadata
/// built the same way (a straddling request appears in both micro-batches),
/// and the last micro-batch padded to `padded_tokens`. outcome() is split for
/// more than one range, single_requested for one; mode() is request_aligned
/// when every cut falls between requests, token_balanced otherwise.
///
/// Checked as planned slices are, before anything is built; engine_error:
/// - errc::empty_batch: no ranges;
/// - errc::invalid_argument: ranges that do not start at token 0, leave a gap
///   or overlap, end before the batch's last token or past it, or a range
///   without real tokens; padded_tokens < num_tokens;
/// - errc::length_mismatch: a request range that is not the one the token
///   range holds (naming both);
/// - any error of validate_batch.
ubatch_plan plan_from_ranges(const batch_view& batch, std::span<const ubatch_range> ranges,
                             std::int32_t padded_tokens);
/// As above, into `plan` (reusing its storage), reporting failure through
/// `ec` and leaving `plan` empty. Only allocation failure still throws.
void plan_from_ranges(const batch_view& batch, std::span<const ubatch_range> ranges, std::int32_t padded_tokens,
                      ubatch_plan& plan, std::error_code& ec);

/// Which of a micro-batch's token rows a view should cover.
enum class token_extent : std::uint8_t {
  real,    ///< [token_begin, token_end): rows that hold real tokens
  padded,  ///< [token_begin, token_begin + padded_tokens): rows the graph reads, padding included
};

namespace detail {
struct row_range {
  std::int64_t begin, end;
};
/// Checks k and that `available` rows cover the micro-batch; throws
/// engine_error naming the micro-batch otherwise.
row_range ubatch_rows(const ubatch_plan& plan, std::int32_t k, token_extent extent, std::int64_t available);
}  // namespace detail

/// Micro-batch k's rows of a per-token input that covers the whole step
/// (row i = token i). Shares memory with `all`. Throws engine_error
/// (errc::invalid_argument) when k is out of range or `all` has too few rows.
template <class T>
token_rows<T> ubatch_rows(token_rows<T> all, const ubatch_plan& plan, std::int32_t k,
                          token_extent extent = token_extent::real) {
  const detail::row_range r = detail::ubatch_rows(plan, k, extent, all.num_rows());
  return all.rows(r.begin, r.end);
}

/// The 1-D case on spans.
template <class T, std::size_t Extent>
std::span<T> ubatch_rows(std::span<T, Extent> all, const ubatch_plan& plan, std::int32_t k,
                         token_extent extent = token_extent::real) {
  const detail::row_range r =
      detail::ubatch_rows(plan, k, extent, static_cast<std::int64_t>(all.size()));
  return std::span<T>(all).subspan(static_cast<std::size_t>(r.begin),
                                   static_cast<std::size_t>(r.end - r.begin));
}

}  // namespace cobatch::engine
