#include "cobatch/engine/ubatch/ubatch_slicing.hpp"

#include "batch_check.hpp"
#include "message.hpp"

#include <algorithm>
#include <cstring>
#include <string>

namespace cobatch::engine {
namespace detail {
namespace {

fault check_request(const batch_shape& shape, const slice_request& r, const slice_policy& p,
                    std::string* detail) {
  if (p.mode != split_mode::token_balanced && p.mode != split_mode::request_aligned) {
    return fail(detail, errc::unknown_mode, "slice_policy::mode=", static_cast<int>(p.mode),
                " is not a split_mode");
  }
  if (p.thresholds.decode_tokens < 0) {
    return fail(detail, errc::negative_length, "thresholds.decode_tokens=", p.thresholds.decode_tokens,
                " is negative");
  }
  if (p.thresholds.prefill_tokens < 0) {
    return fail(detail, errc::negative_length, "thresholds.prefill_tokens=",
                p.thresholds.prefill_tokens, " is negative");
  }
  if (p.thresholds.uniform_decode_query_len < 1) {
    return fail(detail, errc::invalid_argument, "thresholds.uniform_decode_query_len=",
                p.thresholds.uniform_decode_query_len, " must be at least 1");
  }
  // Written so that NaN fails too.
  if (!(p.min_request_aligned_share >= 0.0 && p.min_request_aligned_share <= 0.5)) {
    return fail(detail, errc::invalid_argument, "min_request_aligned_share=",
                p.min_request_aligned_share, " is outside [0, 0.5]");
  }
  if (r.num_ubatches < 1) {
    return fail(detail, errc::invalid_argument, "num_ubatches=", r.num_ubatches,
                " must be at least 1");
  }
  if (r.num_ubatches > shape.num_tokens) {
    return fail(detail, errc::too_many_ubatches, "num_ubatches=", r.num_ubatches,
                " exceeds num_tokens=", shape.num_tokens, ": each micro-batch needs a real token");
  }
  if (r.padded_tokens < shape.num_tokens) {
    return fail(detail, errc::invalid_argument, "padded_tokens=", r.padded_tokens,
                " is less than num_tokens=", shape.num_tokens);
  }
  return {};
}

// Cut k (1 <= k < N) as a token position. vLLM gives every micro-batch
// ceil(padded / N) slots; the clamp keeps positions within the padded batch
// when (N - 1) slots already reach past it, which the empty-last check then
// rejects.
void token_balanced_cuts(std::span<std::int64_t> cuts, std::int64_t n, std::int64_t padded) {
  const std::int64_t slot = (padded + n - 1) / n;
  for (std::int64_t k = 0; k < n; ++k) cuts[static_cast<std::size_t>(k)] = std::min(k * slot, padded);
}

// Cuts at request boundaries nearest to k * T / N (ties to the earlier one,
// compared exactly in integers), each strictly after the one before. Returns
// false when there are not enough distinct boundaries.
bool request_aligned_cuts(std::span<std::int64_t> cuts, std::span<const std::int32_t> loc,
                          std::int64_t n, std::int64_t tokens) {
  std::int64_t prev = 0;
  cuts[0] = 0;
  for (std::int64_t k = 1; k < n; ++k) {
    const std::int64_t goal = k * tokens;  // compare n * value against this
    const auto hi_it = std::lower_bound(loc.begin(), loc.end(), goal,
                                        [n](std::int32_t v, std::int64_t g) { return n * v < g; });
    const std::int64_t hi = *hi_it;  // exists: loc.back() == tokens and n * tokens >= goal
    const std::int64_t lo = hi_it == loc.begin() ? hi : *(hi_it - 1);
    std::int64_t cut = (goal - n * lo <= n * hi - goal) ? lo : hi;
    if (cut <= prev) cut = *std::upper_bound(loc.begin(), loc.end(), static_cast<std::int32_t>(prev));
    if (cut >= tokens) return false;
    cuts[static_cast<std::size_t>(k)] = cut;
    prev = cut;
  }
  return true;
}

bool balanced_enough(std::span<const std::int64_t> cuts, std::int64_t tokens, double share) {
  const auto n = static_cast<std::int64_t>(cuts.size());
  std::int64_t smallest = tokens - cuts.back();
  for (std::size_t k = 1; k < cuts.size(); ++k) smallest = std::min(smallest, cuts[k] - cuts[k - 1]);
  return static_cast<double>(smallest) * static_cast<double>(n) >=
         2.0 * share * static_cast<double>(tokens);
}

}  // namespace

struct plan_builder {
  // Fills `plan` from the cut positions (cuts[0] == 0, strictly increasing,
  // all below num_tokens): one pass to find request ranges and the arena
  // size, one allocation, one pass to copy and adjust the metadata.
  // `pad_query_len` > 0 (a uniform-decode batch's query length) pads each
  // micro-batch's requests to cover its padding rows with empty requests.
  static void build(ubatch_plan& plan, const batch_view& b, std::span<const std::int64_t> cuts,
                    std::int32_t padded, std::int32_t pad_query_len) {
    const auto n = static_cast<std::int32_t>(cuts.size());
    const std::int32_t tokens = b.num_tokens;
    const std::int32_t reqs = b.num_reqs();
    const std::int32_t* loc = b.query_start_loc.data();
    plan.entries_.resize(static_cast<std::size_t>(n));
    std::int64_t arena = 0;
    std::int32_t req_begin = 0;
    for (std::int32_t k = 0; k < n; ++k) {
      auto& e = plan.entries_[static_cast<std::size_t>(k)];
      e.token_begin = static_cast<std::int32_t>(cuts[static_cast<std::size_t>(k)]);
      e.token_end = k + 1 < n ? static_cast<std::int32_t>(cuts[static_cast<std::size_t>(k) + 1]) : tokens;
      e.padded_tokens = (k + 1 < n ? e.token_end : padded) - e.token_begin;
      e.req_begin = req_begin;
      if (k + 1 < n) {
        // The request holding the next micro-batch's first token: the last
        // whose offset is <= the cut. It is never empty (its end is past the
        // cut), so empty requests at the cut stay with this micro-batch.
        const std::int32_t next = static_cast<std::int32_t>(
            std::upper_bound(loc, loc + reqs + 1, e.token_end) - loc - 1);
        e.req_end = loc[next] < e.token_end ? next + 1 : next;
        req_begin = next;
      } else {
        e.req_end = reqs;
      }
      const std::int32_t padding = e.padded_tokens - (e.token_end - e.token_begin);
      e.empty_reqs = pad_query_len > 0 ? (padding + pad_query_len - 1) / pad_query_len : 0;
      e.arena_offset = static_cast<std::int32_t>(arena);
      arena += 2 * (static_cast<std::int64_t>(e.req_end - e.req_begin) + e.empty_reqs) + 1;
    }
    plan.arena_.resize(static_cast<std::size_t>(arena));
    std::int32_t* out = plan.arena_.data();
    for (const auto& e : plan.entries_) {
      const std::int32_t m = e.req_end - e.req_begin;
      std::int32_t* q = out + e.arena_offset;
      std::int32_t* s = q + m + e.empty_reqs + 1;
      const std::int32_t* src = loc + e.req_begin;
      const std::int32_t shift = e.token_begin;
      for (std::int32_t j = 0; j <= m; ++j) q[j] = src[j] - shift;
      // A request straddling the start keeps its full seq_len (its earlier
      // tokens are context here) but only its tokens from the cut on; one
      // straddling the end loses the tokens after the cut from both.
      q[0] = 0;
      q[m] = e.token_end - shift;
      std::memcpy(s, b.seq_lens.data() + e.req_begin, static_cast<std::size_t>(m) * sizeof(std::int32_t));
      s[m - 1] -= loc[e.req_end] - e.token_end;
      std::fill_n(q + m + 1, e.empty_reqs, q[m]);
      std::fill_n(s + m, e.empty_reqs, 0);
    }
  }

  static void set(ubatch_plan& plan, split_outcome outcome, split_mode used, split_mode requested,
                  std::int32_t tokens, std::int32_t padded) {
    plan.outcome_ = outcome;
    plan.mode_ = used;
    plan.requested_mode_ = requested;
    plan.num_tokens_ = tokens;
    plan.padded_tokens_ = padded;
  }

  static void clear(ubatch_plan& plan) {
    plan.entries_.clear();
    plan.arena_.clear();
    set(plan, split_outcome::single_requested, split_mode::token_balanced, split_mode::token_balanced, 0, 0);
  }
};

namespace {

fault slice(const batch_view& b, const slice_request& r, const slice_policy& p, ubatch_plan& plan,
            std::string* detail) {
  batch_shape shape;
  if (const fault f = check_batch(b, shape, detail)) return f;
  if (const fault f = check_request(shape, r, p, detail)) return f;

  const std::int64_t n = r.num_ubatches;
  const std::int64_t tokens = shape.num_tokens;
  split_outcome outcome = split_outcome::split;
  split_mode used = p.mode;
  if (n == 1) {
    outcome = split_outcome::single_requested;
  } else if (shape.is_uniform(p.thresholds.uniform_decode_query_len)) {
    if (tokens < p.thresholds.decode_tokens) outcome = split_outcome::below_decode_threshold;
  } else if (tokens < p.thresholds.prefill_tokens) {
    outcome = split_outcome::below_prefill_threshold;
  }

  // Cut positions live on the stack for the usual few micro-batches.
  constexpr std::size_t inline_cuts = 16;
  std::int64_t small[inline_cuts];
  std::vector<std::int64_t> large;
  std::span<std::int64_t> cuts(small, 1);
  cuts[0] = 0;
  if (outcome == split_outcome::split) {
    if (static_cast<std::size_t>(n) > inline_cuts) large.resize(static_cast<std::size_t>(n));
    cuts = large.empty() ? std::span<std::int64_t>(small, static_cast<std::size_t>(n))
                         : std::span<std::int64_t>(large);
    bool aligned = false;
    if (p.mode == split_mode::request_aligned) {
      aligned = request_aligned_cuts(cuts, b.query_start_loc, n, tokens) &&
                balanced_enough(cuts, tokens, p.min_request_aligned_share);
    }
    if (!aligned) {
      used = split_mode::token_balanced;
      token_balanced_cuts(cuts, n, r.padded_tokens);
      // Cuts are non-decreasing, so if the last micro-batch has a real token
      // every earlier one has too.
      if (cuts.back() >= tokens) {
        outcome = split_outcome::empty_last_ubatch;
        cuts = cuts.first(1);
      }
    }
  }
  const std::int32_t q = p.thresholds.uniform_decode_query_len;
  plan_builder::build(plan, b, cuts, r.padded_tokens, shape.is_uniform(q) ? q : 0);
  plan_builder::set(plan, outcome, used, p.mode, shape.num_tokens, r.padded_tokens);
  return {};
}

fault from_ranges(const batch_view& b, std::span<const ubatch_range> ranges, std::int32_t padded,
                  ubatch_plan& plan, std::string* detail) {
  batch_shape shape;
  if (const fault f = check_batch(b, shape, detail)) return f;
  const auto n = static_cast<std::int32_t>(ranges.size());
  if (n == 0) return fail(detail, errc::empty_batch, "no ranges");
  if (padded < shape.num_tokens) {
    return fail(detail, errc::invalid_argument, "padded_tokens=", padded,
                " is less than num_tokens=", shape.num_tokens);
  }
  std::vector<std::int64_t> cuts(static_cast<std::size_t>(n));
  std::int32_t expect = 0;
  for (std::int32_t k = 0; k < n; ++k) {
    const ubatch_range& r = ranges[static_cast<std::size_t>(k)];
    if (r.token_begin != expect) {
      return fail(detail, errc::invalid_argument, "range ", k, " begins at token ",
                  r.token_begin, "; it must begin at ", expect,
                  k == 0 ? " (the batch's first token)" : " (where the previous range ends)");
    }
    if (r.token_end <= r.token_begin) {
      return fail(detail, errc::invalid_argument, "range ", k, " [", r.token_begin, ", ",
                  r.token_end, ") has no real tokens");
    }
    if (r.token_end > shape.num_tokens) {
      return fail(detail, errc::invalid_argument, "range ", k, " ends at token ", r.token_end,
                  ", past the batch's ", shape.num_tokens, " tokens");
    }
    cuts[static_cast<std::size_t>(k)] = r.token_begin;
    expect = r.token_end;
  }
  if (expect != shape.num_tokens) {
    return fail(detail, errc::invalid_argument, "the ranges end at token ", expect,
                "; the batch has ", shape.num_tokens);
  }
  plan_builder::build(plan, b, cuts, padded, 0);  // the given request ranges are the real ones: no padding requests
  for (std::int32_t k = 0; k < n; ++k) {
    const ubatch_range& r = ranges[static_cast<std::size_t>(k)];
    const ubatch built = plan[k];
    if (r.req_begin != built.req_begin || r.req_end != built.req_end) {
      return fail(detail, errc::length_mismatch, "range ", k, " gives requests [", r.req_begin,
                  ", ", r.req_end, ") but tokens [", r.token_begin, ", ", r.token_end, ") hold requests [",
                  built.req_begin, ", ", built.req_end, ")");
    }
  }
  bool aligned = true;
  for (std::int32_t k = 1; k < n; ++k) {
    const auto cut = static_cast<std::int32_t>(cuts[static_cast<std::size_t>(k)]);
    aligned = aligned && std::binary_search(b.query_start_loc.begin(), b.query_start_loc.end(), cut);
  }
  const split_mode used = aligned ? split_mode::request_aligned : split_mode::token_balanced;
  plan_builder::set(plan, n > 1 ? split_outcome::split : split_outcome::single_requested, used, used,
                    shape.num_tokens, padded);
  return {};
}

}  // namespace
}  // namespace detail

ubatch ubatch_plan::operator[](std::int32_t k) const noexcept {
  const entry& e = entries_[static_cast<std::size_t>(k)];
  const std::size_t m = static_cast<std::size_t>(e.req_end - e.req_begin);
  const std::size_t padded_m = m + static_cast<std::size_t>(e.empty_reqs);
  const std::int32_t* q = arena_.data() + e.arena_offset;
  const std::int32_t* s = q + padded_m + 1;
  return ubatch{e.token_begin,
                e.token_end,
                e.req_begin,
                e.req_end,
                e.padded_tokens,
                std::span<const std::int32_t>(q, m + 1),
                std::span<const std::int32_t>(s, m),
                std::span<const std::int32_t>(q, padded_m + 1),
                std::span<const std::int32_t>(s, padded_m)};
}

ubatch ubatch_plan::at(std::int32_t k) const {
  if (k < 0 || k >= size()) {
    throw_engine_error(errc::invalid_argument,
                       detail::cat("ubatch_plan::at: micro-batch ", k, " is out of range of a plan of ", size()));
  }
  return (*this)[k];
}

ubatch_plan slice_batch(const batch_view& batch, const slice_request& request, const slice_policy& policy) {
  ubatch_plan plan;
  slice_batch(batch, request, policy, plan);
  return plan;
}

void slice_batch(const batch_view& batch, const slice_request& request, const slice_policy& policy,
                 ubatch_plan& plan) {
  std::string text;
  if (const detail::fault f = detail::slice(batch, request, policy, plan, &text)) {
    detail::plan_builder::clear(plan);
    detail::raise(f, "slice_batch", text);
  }
}

void slice_batch(const batch_view& batch, const slice_request& request, const slice_policy& policy,
                 ubatch_plan& plan, std::error_code& ec) {
  const detail::fault f = detail::slice(batch, request, policy, plan, nullptr);
  if (f) detail::plan_builder::clear(plan);
  ec = f ? make_error_code(f.code) : std::error_code{};
}

ubatch_plan plan_from_ranges(const batch_view& batch, std::span<const ubatch_range> ranges,
                             std::int32_t padded_tokens) {
  ubatch_plan plan;
  std::string text;
  if (const detail::fault f = detail::from_ranges(batch, ranges, padded_tokens, plan, &text)) {
    detail::raise(f, "plan_from_ranges", text);
  }
  return plan;
}

void plan_from_ranges(const batch_view& batch, std::span<const ubatch_range> ranges, std::int32_t padded_tokens,
                      ubatch_plan& plan, std::error_code& ec) {
  const detail::fault f = detail::from_ranges(batch, ranges, padded_tokens, plan, nullptr);
  if (f) detail::plan_builder::clear(plan);
  ec = f ? make_error_code(f.code) : std::error_code{};
}

namespace detail {

row_range ubatch_rows(const ubatch_plan& plan, std::int32_t k, token_extent extent, std::int64_t available) {
  if (k < 0 || k >= plan.size()) {
    throw_engine_error(errc::invalid_argument,
                       cat("ubatch_rows: micro-batch ", k, " is out of range of a plan of ", plan.size()));
  }
  if (extent != token_extent::real && extent != token_extent::padded) {
    throw_engine_error(errc::unknown_mode, cat("ubatch_rows: token_extent=", static_cast<int>(extent), " is not a token_extent"));
  }
  const ubatch u = plan[k];
  const std::int64_t end = extent == token_extent::real ? u.token_end : std::int64_t{u.token_begin} + u.padded_tokens;
  if (end > available) {
    throw_engine_error(errc::invalid_argument,
                       cat("ubatch_rows: micro-batch ", k, " covers rows [", u.token_begin, ", ", end,
                           ") but the input has ", available, " rows"));
  }
  return {u.token_begin, end};
}

}  // namespace detail
}  // namespace cobatch::engine
