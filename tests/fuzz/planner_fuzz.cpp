// planner_fuzz: a seeded random driver for the pure-CPU planners. Each target
// draws an input (mostly valid, sometimes broken on purpose), runs the planner
// in its throwing and error_code forms, and checks invariants: every token
// covered exactly once, offsets consistent, the two forms agreeing, failures
// typed (engine_error / the engine category), never only "it did not crash".
//
//   planner_fuzz [--seed S] [--iterations N] [--target NAME]
//
// A failure prints the target, seed and iteration, which reproduce it alone.
// CI runs it under ASan+UBSan with a fixed seed (tests/fuzz/CMakeLists.txt).
// A new planner (the attention plan) is one more row in `targets`.
#include <cobatch/engine/attention/attention_plan.hpp>
#include <cobatch/engine/batch.hpp>
#include <cobatch/engine/dispatch/capture_ladder.hpp>
#include <cobatch/engine/dispatch/dispatch_key.hpp>
#include <cobatch/engine/dispatch/dispatch_router.hpp>
#include <cobatch/engine/error.hpp>
#include <cobatch/engine/ubatch/ubatch_sizing.hpp>
#include <cobatch/engine/ubatch/ubatch_slicing.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace cobatch::engine;
using rng_t = std::mt19937_64;

struct invariant_broken : std::runtime_error {
  using std::runtime_error::runtime_error;
};

#define FUZZ_CHECK(cond, what)                                                                    \
  do {                                                                                            \
    if (!(cond)) {                                                                                \
      std::ostringstream fuzz_msg_;                                                               \
      fuzz_msg_ << "invariant broken: " #cond " (" << what << ")";                                \
      throw invariant_broken(fuzz_msg_.str());                                                    \
    }                                                                                             \
  } while (0)

std::int64_t pick(rng_t& rng, std::int64_t lo, std::int64_t hi) {
  return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
}
bool chance(rng_t& rng, int percent) { return pick(rng, 0, 99) < percent; }

// Runs `f`, which must either succeed or throw an engine_error; returns the
// error's code (empty on success). Anything else thrown breaks the invariant.
template <class F>
std::error_code typed_outcome(F&& f) {
  try {
    f();
  } catch (const engine_error& e) {
    FUZZ_CHECK(e.code().category() == engine_category(), "engine_error with a foreign category");
    FUZZ_CHECK(std::strlen(e.what()) > 0, "engine_error without a message");
    return e.code();
  }
  return {};
}

// ------------------------------------------------------------- batches ---

struct owned_batch {
  std::vector<std::int32_t> query_start_loc;
  std::vector<std::int32_t> seq_lens;
  std::int32_t num_tokens = 0;
  batch_view view() const { return {query_start_loc, seq_lens, num_tokens}; }
};

// A valid batch: decode-like, prefill-like or mixed, zero-length requests
// included now and then.
owned_batch valid_batch(rng_t& rng) {
  owned_batch b;
  const auto reqs = static_cast<std::int32_t>(pick(rng, 1, chance(rng, 20) ? 300 : 12));
  const int kind = static_cast<int>(pick(rng, 0, 2));
  b.query_start_loc.push_back(0);
  for (std::int32_t r = 0; r < reqs; ++r) {
    std::int32_t q = kind == 0 ? 1 : kind == 1 ? static_cast<std::int32_t>(pick(rng, 1, 700))
                                               : static_cast<std::int32_t>(pick(rng, 0, 40));
    if (chance(rng, 3)) q = 0;
    b.query_start_loc.push_back(b.query_start_loc.back() + q);
    b.seq_lens.push_back(q + static_cast<std::int32_t>(pick(rng, 0, 4000)));
  }
  b.num_tokens = b.query_start_loc.back();
  if (b.num_tokens == 0) {  // a batch needs a token
    b.query_start_loc.back() += 1;
    b.seq_lens.back() += 1;
    b.num_tokens = 1;
  }
  return b;
}

// Breaks one thing of a valid batch; returns the errors that may report it.
std::vector<errc> break_batch(rng_t& rng, owned_batch& b) {
  const auto n = static_cast<std::int64_t>(b.seq_lens.size());
  switch (pick(rng, 0, 6)) {
    case 0: b.num_tokens += static_cast<std::int32_t>(pick(rng, 1, 5)); return {errc::length_mismatch};
    case 1: b.num_tokens = -static_cast<std::int32_t>(pick(rng, 1, 5)); return {errc::negative_length, errc::length_mismatch};
    case 2: b.query_start_loc.pop_back(); return {errc::length_mismatch};
    case 3: b.query_start_loc[0] = static_cast<std::int32_t>(pick(rng, 1, 3)); return {errc::invalid_argument, errc::length_mismatch, errc::negative_length};
    case 4: {
      const auto r = static_cast<std::size_t>(pick(rng, 0, n - 1));
      b.seq_lens[r] = -static_cast<std::int32_t>(pick(rng, 1, 9));
      return {errc::negative_length, errc::length_mismatch};
    }
    case 5: {  // an offset below the one before it
      const auto i = static_cast<std::size_t>(pick(rng, 1, n));
      b.query_start_loc[i] = b.query_start_loc[i - 1] - static_cast<std::int32_t>(pick(rng, 1, 3));
      return {errc::negative_length, errc::length_mismatch, errc::invalid_argument};
    }
    default:
      b.seq_lens.clear();
      b.query_start_loc.assign(1, 0);
      b.num_tokens = 0;
      return {errc::empty_batch};
  }
}

void check_shape(const owned_batch& b, const batch_shape& s) {
  FUZZ_CHECK(s.num_reqs == static_cast<std::int32_t>(b.seq_lens.size()), s.num_reqs);
  FUZZ_CHECK(s.num_tokens == b.num_tokens, s.num_tokens);
  std::int32_t lo = std::numeric_limits<std::int32_t>::max(), hi = 0;
  for (std::size_t r = 0; r < b.seq_lens.size(); ++r) {
    const std::int32_t q = b.query_start_loc[r + 1] - b.query_start_loc[r];
    lo = std::min(lo, q);
    hi = std::max(hi, q);
  }
  FUZZ_CHECK(s.min_query_len == lo && s.max_query_len == hi, s.min_query_len << ".." << s.max_query_len);
}

void fuzz_batch_validation(rng_t& rng) {
  owned_batch b = valid_batch(rng);
  std::vector<errc> allowed;
  if (chance(rng, 50)) allowed = break_batch(rng, b);
  batch_shape thrown_shape;
  const std::error_code thrown = typed_outcome([&] { thrown_shape = validate_batch(b.view()); });
  std::error_code ec;
  const batch_shape quiet_shape = validate_batch(b.view(), ec);
  FUZZ_CHECK(ec == thrown, "throwing and error_code forms disagree: " << thrown.message() << " vs " << ec.message());
  if (allowed.empty()) {
    FUZZ_CHECK(!thrown, "a valid batch was rejected: " << thrown.message());
    check_shape(b, thrown_shape);
    check_shape(b, quiet_shape);
  } else {
    FUZZ_CHECK(thrown, "a broken batch was accepted");
    FUZZ_CHECK(std::any_of(allowed.begin(), allowed.end(), [&](errc c) { return thrown == c; }),
               "unexpected error " << thrown.message());
    FUZZ_CHECK(quiet_shape.num_reqs == 0 && quiet_shape.num_tokens == 0, "error_code form returned a shape");
  }
}

// ------------------------------------------------------------- slicing ---

void check_plan(const owned_batch& b, const slice_request& req, const ubatch_plan& plan) {
  const auto& qs = b.query_start_loc;
  FUZZ_CHECK(plan.num_tokens() == b.num_tokens, plan.num_tokens());
  FUZZ_CHECK(plan.padded_tokens() == req.padded_tokens, plan.padded_tokens());
  FUZZ_CHECK(plan.split() ? plan.size() == req.num_ubatches : plan.size() == 1, "size " << plan.size());
  std::vector<std::int64_t> covered(b.seq_lens.size(), 0);  // tokens of each request seen
  std::int32_t next_token = 0;
  std::int64_t padded_sum = 0;
  for (std::int32_t k = 0; k < plan.size(); ++k) {
    const ubatch u = plan[k];
    FUZZ_CHECK(u.token_begin == next_token, "ubatch " << k << " starts at " << u.token_begin);
    FUZZ_CHECK(u.token_end >= u.token_begin, "ubatch " << k);
    FUZZ_CHECK(u.padded_tokens >= u.real_tokens(), "ubatch " << k);
    if (k + 1 < plan.size()) FUZZ_CHECK(u.padding() == 0, "padding before the last ubatch " << k);
    next_token = u.token_end;
    padded_sum += u.padded_tokens;
    FUZZ_CHECK(u.query_start_loc.size() == static_cast<std::size_t>(u.num_reqs()) + 1, "ubatch " << k);
    FUZZ_CHECK(u.seq_lens.size() == static_cast<std::size_t>(u.num_reqs()), "ubatch " << k);
    FUZZ_CHECK(u.query_start_loc.front() == 0 && u.query_start_loc.back() == u.real_tokens(), "ubatch " << k);
    for (std::int32_t r = 0; r < static_cast<std::int32_t>(b.seq_lens.size()); ++r) {
      const std::int32_t overlap = std::max(0, std::min(qs[r + 1], u.token_end) - std::max(qs[r], u.token_begin));
      const bool inside = r >= u.req_begin && r < u.req_end;
      if (overlap > 0) FUZZ_CHECK(inside, "request " << r << " has tokens in ubatch " << k << " but is not in it");
      if (!inside) continue;
      const auto local = static_cast<std::size_t>(r - u.req_begin);
      const std::int32_t q = u.query_start_loc[local + 1] - u.query_start_loc[local];
      FUZZ_CHECK(q == overlap, "request " << r << " in ubatch " << k << ": " << q << " != " << overlap);
      covered[static_cast<std::size_t>(r)] += q;
      if (overlap > 0) {
        const std::int32_t after = std::max(0, qs[r + 1] - u.token_end);
        FUZZ_CHECK(u.seq_lens[local] == b.seq_lens[static_cast<std::size_t>(r)] - after,
                   "seq_len of request " << r << " in ubatch " << k);
      }
    }
    if (u.real_tokens() > 0) {
      std::error_code ec;
      (void)validate_batch(u.as_batch(), ec);
      FUZZ_CHECK(!ec, "ubatch " << k << " is not a valid batch: " << ec.message());
    }
  }
  FUZZ_CHECK(next_token == b.num_tokens, "tokens end at " << next_token);
  FUZZ_CHECK(padded_sum == req.padded_tokens, "padded slots " << padded_sum);
  for (std::size_t r = 0; r < covered.size(); ++r) {
    FUZZ_CHECK(covered[r] == qs[r + 1] - qs[r], "request " << r << " covered " << covered[r] << " times its tokens");
  }
}

void fuzz_slicing(rng_t& rng) {
  owned_batch b = valid_batch(rng);
  const bool broken_batch = chance(rng, 5);
  if (broken_batch) (void)break_batch(rng, b);
  slice_request req;
  req.num_ubatches = static_cast<std::int32_t>(chance(rng, 5) ? pick(rng, -3, 0) : pick(rng, 1, 8));
  req.padded_tokens = b.num_tokens + static_cast<std::int32_t>(chance(rng, 50) ? 0 : pick(rng, 0, 64));
  if (chance(rng, 5)) req.padded_tokens = b.num_tokens - static_cast<std::int32_t>(pick(rng, 1, 3));
  slice_policy policy;
  policy.mode = chance(rng, 50) ? split_mode::token_balanced : split_mode::request_aligned;
  policy.thresholds.decode_tokens = static_cast<std::int32_t>(pick(rng, 0, 64));
  policy.thresholds.prefill_tokens = static_cast<std::int32_t>(pick(rng, 0, 1024));
  policy.min_request_aligned_share = static_cast<double>(pick(rng, 0, 50)) / 100.0;

  ubatch_plan thrown_plan;
  const std::error_code thrown = typed_outcome([&] { slice_batch(b.view(), req, policy, thrown_plan); });
  ubatch_plan quiet_plan;
  std::error_code ec;
  slice_batch(b.view(), req, policy, quiet_plan, ec);
  FUZZ_CHECK(ec == thrown, "throwing and error_code forms disagree: " << thrown.message() << " vs " << ec.message());
  const bool must_fail = broken_batch || req.num_ubatches < 1 || req.padded_tokens < b.num_tokens;
  if (must_fail) {
    FUZZ_CHECK(thrown, "a bad slice request was accepted");
    FUZZ_CHECK(quiet_plan.empty(), "a failed slice left a plan");
    return;
  }
  FUZZ_CHECK(!thrown, "a valid slice request was rejected: " << thrown.message());
  check_plan(b, req, thrown_plan);
  check_plan(b, req, quiet_plan);
}

// -------------------------------------------------------------- sizing ---

std::int64_t any_tokens(rng_t& rng) {
  switch (pick(rng, 0, 4)) {
    case 0: return pick(rng, -5, 0);
    case 1: return std::numeric_limits<std::int64_t>::max() - pick(rng, 0, 3);
    case 2: return pick(rng, 1, std::int64_t{1} << 62);
    default: return pick(rng, 1, 100'000);
  }
}

ubatch_count_limits any_limits(rng_t& rng) {
  const auto lo = static_cast<std::int32_t>(chance(rng, 5) ? pick(rng, -2, 0) : pick(rng, 1, 16));
  const std::int32_t hi = chance(rng, 10)   ? std::numeric_limits<std::int32_t>::max()
                          : chance(rng, 5) ? lo - 1
                                           : static_cast<std::int32_t>(pick(rng, lo, lo + 64));
  return {lo, hi};
}

void fuzz_sizing(rng_t& rng) {
  const std::int64_t tokens = any_tokens(rng);
  const ubatch_count_limits limits = any_limits(rng);
  activation_memory m;
  m.free_bytes = chance(rng, 10) ? std::numeric_limits<std::uint64_t>::max() - static_cast<std::uint64_t>(pick(rng, 0, 9))
                                 : static_cast<std::uint64_t>(pick(rng, 0, std::int64_t{1} << 44));
  m.usable_fraction = chance(rng, 5) ? static_cast<double>(pick(rng, -1, 2)) : static_cast<double>(pick(rng, 1, 100)) / 100.0;
  m.activation_bytes_per_token = static_cast<std::uint64_t>(chance(rng, 5) ? 0 : pick(rng, 1, 1 << 20));

  memory_fit fit;
  const std::error_code thrown = typed_outcome([&] { fit = fit_to_memory(tokens, m, limits); });
  std::error_code ec;
  const memory_fit quiet = fit_to_memory(tokens, m, limits, ec);
  FUZZ_CHECK(ec == thrown, "fit_to_memory forms disagree: " << thrown.message() << " vs " << ec.message());
  if (!thrown) {
    const std::int32_t hi = static_cast<std::int32_t>(std::min<std::int64_t>(limits.max, tokens));
    FUZZ_CHECK(fit.num_ubatches >= 1 && fit.num_ubatches <= hi, "count " << fit.num_ubatches);
    FUZZ_CHECK(fit.bytes_per_ubatch <= fit.budget_bytes, fit.bytes_per_ubatch << " > " << fit.budget_bytes);
    FUZZ_CHECK(fit.tokens_per_ubatch >= 1, fit.tokens_per_ubatch);
    // Every token has a micro-batch, and the largest is ceil(tokens / n).
    const std::int64_t n = fit.num_ubatches;
    FUZZ_CHECK(fit.tokens_per_ubatch == tokens / n + (tokens % n != 0), "largest micro-batch " << fit.tokens_per_ubatch);
    FUZZ_CHECK(quiet.num_ubatches == fit.num_ubatches && quiet.bytes_per_ubatch == fit.bytes_per_ubatch, "forms");
  } else {
    FUZZ_CHECK(quiet.num_ubatches == 0, "error_code form returned a count");
  }

  // The timing choice, with whatever history, is decided without walking
  // every count and stays within the limits.
  timing_options o;
  o.ema_alpha = 0.5;
  o.per_ubatch_overhead = std::chrono::nanoseconds(chance(rng, 30) ? 0 : pick(rng, 1, 100'000));
  o.overlappable_fraction = static_cast<double>(pick(rng, 0, 50)) / 100.0;
  o.target_step_time = std::chrono::nanoseconds(pick(rng, 1, std::int64_t{1} << 40));
  step_timing_model model(o);
  if (chance(rng, 80)) {
    model.record({step_phase::decode, pick(rng, 1, 1 << 20), std::chrono::nanoseconds(pick(rng, 0, 1 << 30)),
                  static_cast<std::int32_t>(pick(rng, 1, 64))});
  }
  timing_choice choice;
  const std::error_code choose_error = typed_outcome([&] { choice = model.choose(step_phase::decode, tokens, limits); });
  if (!choose_error) {
    const std::int32_t hi = static_cast<std::int32_t>(std::min<std::int64_t>(limits.max, tokens));
    FUZZ_CHECK(choice.num_ubatches >= std::min(limits.min, hi) && choice.num_ubatches <= hi,
               "timing count " << choice.num_ubatches << " outside " << limits.min << ".." << hi);
    if (choice.reason == timing_reason::target_met) {
      FUZZ_CHECK(choice.predicted <= o.target_step_time, "target_met above the target");
    }
  }
  FUZZ_CHECK(static_cast<bool>(choose_error) == (tokens < 1 || limits.min < 1 || limits.max < limits.min),
             "choose: " << choose_error.message());
}

// -------------------------------------------------------- dispatch keys ---

void check_key(dispatch_key k) {
  FUZZ_CHECK(k.tokens() >= 1 && k.tokens() <= dispatch_key::max_tokens, "tokens " << k.tokens());
  FUZZ_CHECK(dispatch_key::from_bits(k.bits()) == k, "round trip");
  FUZZ_CHECK((k.bits() >> 62) == 0, "mode bits set in a key");
  if (k.is_uniform_decode()) {
    FUZZ_CHECK(!k.is_relaxed(), "uniform and relaxed");
    FUZZ_CHECK(std::uint64_t{k.requests()} * k.uniform_query_len() == k.tokens(),
               k.requests() << " x " << k.uniform_query_len() << " != " << k.tokens());
  } else if (!k.is_relaxed()) {
    FUZZ_CHECK(k.requests() <= k.tokens(), "more requests than tokens");
  }
  FUZZ_CHECK(k.relaxed().is_relaxed() && k.relaxed().tokens() == k.tokens() && k.relaxed().features() == k.features(),
             "relaxed()");
}

std::uint32_t any_count(rng_t& rng, std::uint32_t field_max) {
  switch (pick(rng, 0, 3)) {
    case 0: return static_cast<std::uint32_t>(pick(rng, 0, 2));
    case 1: return field_max + static_cast<std::uint32_t>(pick(rng, -2, 2));
    case 2: return static_cast<std::uint32_t>(pick(rng, 0, std::numeric_limits<std::uint32_t>::max()));
    default: return static_cast<std::uint32_t>(pick(rng, 1, 5000));
  }
}

void fuzz_dispatch_keys(rng_t& rng) {
  const auto features = static_cast<step_feature>(pick(rng, 0, 255));
  dispatch_key key = dispatch_key::from_bits(0);
  std::error_code made;
  switch (pick(rng, 0, 2)) {
    case 0: {
      const std::uint32_t t = any_count(rng, dispatch_key::max_tokens), r = any_count(rng, dispatch_key::max_requests);
      made = typed_outcome([&] { key = dispatch_key::mixed(t, r, features); });
      const bool ok = t >= 1 && r >= 1 && r <= t && t <= dispatch_key::max_tokens && r <= dispatch_key::max_requests;
      FUZZ_CHECK(ok == !made, "mixed(" << t << ", " << r << "): " << made.message());
      if (ok) FUZZ_CHECK(key.tokens() == t && key.requests() == r && !key.is_uniform_decode(), "mixed fields");
      break;
    }
    case 1: {
      const std::uint32_t r = any_count(rng, dispatch_key::max_requests);
      const auto q = static_cast<std::uint32_t>(chance(rng, 70) ? pick(rng, 1, 4) : any_count(rng, dispatch_key::max_query_len));
      made = typed_outcome([&] { key = dispatch_key::uniform_decode(r, q, features); });
      const bool ok = r >= 1 && q >= 1 && r <= dispatch_key::max_requests && q <= dispatch_key::max_query_len &&
                      std::uint64_t{r} * q <= dispatch_key::max_tokens;
      FUZZ_CHECK(ok == !made, "uniform_decode(" << r << ", " << q << "): " << made.message());
      if (ok) FUZZ_CHECK(key.requests() == r && key.uniform_query_len() == q, "uniform fields");
      break;
    }
    default: {
      const std::uint32_t t = any_count(rng, dispatch_key::max_tokens);
      made = typed_outcome([&] { key = dispatch_key::for_tokens(t, features); });
      const bool ok = t >= 1 && t <= dispatch_key::max_tokens;
      FUZZ_CHECK(ok == !made, "for_tokens(" << t << "): " << made.message());
      break;
    }
  }
  if (made) return;
  check_key(key);
  FUZZ_CHECK(key.features() == features, "features");
  // Any rung from the key's size to the field's limit gives a well-formed key
  // of exactly that many tokens, with the same features.
  const auto rung = static_cast<std::uint32_t>(
      chance(rng, 50) ? pick(rng, key.tokens(), std::min<std::int64_t>(key.tokens() * 4 + 8, dispatch_key::max_tokens))
                      : pick(rng, key.tokens(), dispatch_key::max_tokens));
  const dispatch_key padded = key.padded_to(rung);
  check_key(padded);
  FUZZ_CHECK(padded.tokens() == rung, "padded to " << rung << " has " << padded.tokens());
  FUZZ_CHECK(padded.features() == features, "padding changed the features");
  if (key.is_relaxed()) FUZZ_CHECK(padded.is_relaxed(), "a relaxed key stopped being relaxed");
  if (!key.is_relaxed() && !key.is_uniform_decode()) FUZZ_CHECK(padded.requests() == key.requests(), "mixed lost requests");
}

// -------------------------------------------------------------- router ---

void fuzz_router(rng_t& rng) {
  std::vector<std::uint32_t> sizes;
  const auto rungs = pick(rng, 1, 12);
  std::uint32_t next = 0;
  for (std::int64_t i = 0; i < rungs; ++i) {
    next += static_cast<std::uint32_t>(pick(rng, 1, chance(rng, 10) ? 1 << 21 : 64));
    if (next > dispatch_key::max_tokens) break;
    sizes.push_back(next);
  }
  if (chance(rng, 5)) std::shuffle(sizes.begin(), sizes.end(), rng);  // maybe no longer increasing
  capture_ladder ladder = capture_ladder::standard(1);
  const std::error_code ladder_error = typed_outcome([&] { ladder = capture_ladder(sizes); });
  FUZZ_CHECK(static_cast<bool>(ladder_error) == (sizes.empty() || !std::is_sorted(sizes.begin(), sizes.end()) ||
                                                 std::adjacent_find(sizes.begin(), sizes.end()) != sizes.end()),
             "capture_ladder: " << ladder_error.message());
  if (ladder_error) return;

  dispatch_router router(ladder);
  for (int d = 0; d < 6; ++d) {
    const auto t = ladder.sizes()[static_cast<std::size_t>(pick(rng, 0, static_cast<std::int64_t>(ladder.sizes().size()) - 1))];
    const auto features = static_cast<step_feature>(chance(rng, 70) ? 0 : pick(rng, 0, 255));
    const bool full = chance(rng, 50);
    dispatch_key key = dispatch_key::for_tokens(t, features);
    if (full && chance(rng, 50) && t <= dispatch_key::max_requests) key = dispatch_key::uniform_decode(t, 1, features);
    const std::error_code declared = typed_outcome([&] { router.declare(full ? dispatch_mode::full : dispatch_mode::piecewise, key); });
    FUZZ_CHECK(!declared, "declaring a rung's graph failed: " << declared.message());
  }
  for (int s = 0; s < 16; ++s) {
    const auto tokens = static_cast<std::uint32_t>(pick(rng, 1, std::min<std::int64_t>(ladder.max_size() + 8, dispatch_key::max_tokens)));
    const auto features = static_cast<step_feature>(chance(rng, 70) ? 0 : pick(rng, 0, 255));
    dispatch_key step = dispatch_key::for_tokens(tokens, features);
    if (chance(rng, 40) && tokens <= dispatch_key::max_requests) step = dispatch_key::uniform_decode(tokens, 1, features);
    if (chance(rng, 30)) step = dispatch_key::mixed(tokens, static_cast<std::uint32_t>(pick(rng, 1, std::min<std::int64_t>(tokens, dispatch_key::max_requests))), features);
    const dispatch_options options{chance(rng, 80) ? full_graphs::allowed : full_graphs::disabled};
    dispatch_route route;
    const std::error_code routed = typed_outcome([&] { route = router.route(step, options); });
    FUZZ_CHECK(!routed, "route failed: " << routed.message());
    const auto padded = ladder.pad(tokens);
    if (route.mode == dispatch_mode::eager) {
      FUZZ_CHECK(route.key == step, "eager must run the step's own key");
      continue;
    }
    FUZZ_CHECK(padded.has_value(), "a graph for a step above the ladder");
    FUZZ_CHECK(route.key.tokens() == *padded && route.run_tokens() >= tokens, "graph of " << route.key.tokens());
    FUZZ_CHECK(route.key.features() == features, "graph for other features");
    FUZZ_CHECK(router.is_declared(route.mode, route.key), "routed to an undeclared graph");
    FUZZ_CHECK(route.shape == step.padded_to(*padded), "shape is not the padded step");
    if (route.mode == dispatch_mode::full) FUZZ_CHECK(options.full == full_graphs::allowed, "full while disabled");
    if (route.mode == dispatch_mode::piecewise) FUZZ_CHECK(route.key.is_relaxed(), "piecewise key not relaxed");
    check_key(route.key);
  }
}

// ----------------------------------------------------- attention plan ---

void fuzz_attention_plan(rng_t& rng) {
  owned_batch b = valid_batch(rng);
  kv_cache_config cache;
  cache.page_size = static_cast<std::int32_t>(std::vector<int>{1, 4, 16}[static_cast<std::size_t>(pick(rng, 0, 2))]);
  cache.num_kv_heads = static_cast<std::int32_t>(pick(rng, 1, 4));
  cache.head_dim = chance(rng, 50) ? 64 : 128;
  cache.storage = chance(rng, 50) ? cobatch::gpu::data_type::f32 : cobatch::gpu::data_type::bf16;
  attention_config config;
  config.num_qo_heads = cache.num_kv_heads * static_cast<std::int32_t>(pick(rng, 1, 4));
  config.softmax_scale = 0.125f;
  config.dcp.world = static_cast<std::int32_t>(pick(rng, 1, 4));
  config.dcp.rank = static_cast<std::int32_t>(pick(rng, 0, config.dcp.world - 1));
  config.dcp.interleave = static_cast<std::int32_t>(pick(rng, 1, 4));
  config.merge = chance(rng, 50) ? dcp_merge::all_gather : dcp_merge::lse_all_gather_reduce_scatter;
  if (config.merge == dcp_merge::lse_all_gather_reduce_scatter) config.num_qo_heads *= config.dcp.world;
  config.kv_chunk_pages = chance(rng, 50) ? 0 : static_cast<std::int32_t>(pick(rng, 1, 8));
  // This rank's pages: exactly what each shard needs, at random indices.
  std::vector<std::int32_t> indptr{0}, indices;
  cache.num_pages = 1;
  for (std::int32_t seq : b.seq_lens) {
    const auto n = (config.dcp.local_length(std::max(seq, 0)) + cache.page_size - 1) / cache.page_size;
    indptr.push_back(indptr.back() + static_cast<std::int32_t>(n));
  }
  cache.num_pages = std::max(1, indptr.back() + static_cast<std::int32_t>(pick(rng, 0, 5)));
  for (std::int32_t k = 0; k < indptr.back(); ++k) indices.push_back(static_cast<std::int32_t>(pick(rng, 0, cache.num_pages - 1)));
  bool must_fail = false;
  switch (chance(rng, 15) ? pick(rng, 0, 3) : -1) {
    case 0: (void)break_batch(rng, b); must_fail = true; break;
    case 1:
      if (!indices.empty()) {
        indices[static_cast<std::size_t>(pick(rng, 0, static_cast<std::int64_t>(indices.size()) - 1))] =
            chance(rng, 50) ? cache.num_pages : -1;
        must_fail = true;
      }
      break;
    case 2: indptr.back() += 1; indices.push_back(0); must_fail = true; break;  // one page too many
    case 3: config.num_qo_heads = cache.num_kv_heads * 3 + (cache.num_kv_heads > 1 ? 1 : 0); must_fail = cache.num_kv_heads > 1; break;
    default: break;
  }
  const attention_batch batch{b.view(), page_table_view(indptr, indices)};
  attention_plan plan;
  const std::error_code thrown = typed_outcome([&] { plan_attention(cache, config, batch, plan); });
  attention_plan quiet;
  std::error_code ec;
  plan_attention(cache, config, batch, quiet, ec);
  FUZZ_CHECK(ec == thrown, "error_code form " << ec.message() << " vs throwing form " << thrown.message());
  if (must_fail) FUZZ_CHECK(thrown, "a broken attention batch was planned");
  if (thrown) {
    FUZZ_CHECK(!plan.planned() && !quiet.planned(), "a failed plan looks planned");
    return;
  }
  FUZZ_CHECK(plan.planned() && plan.num_tokens() == b.num_tokens, plan.num_tokens());
  // Every request's shard is covered by its work items exactly once, in order.
  const auto reqs = plan.requests();
  std::int32_t appended = 0;
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    const auto& r = reqs[i];
    FUZZ_CHECK(r.kv_len == config.dcp.local_length(b.seq_lens[i]), "request " << i << " kv_len " << r.kv_len);
    FUZZ_CHECK(r.page_begin == indptr[i], "request " << i);
    for (std::int32_t j = 0; j < r.q_len; ++j) {
      if (config.dcp.owner(static_cast<std::int64_t>(r.seq_len) - r.q_len + j) == config.dcp.rank) ++appended;
    }
  }
  FUZZ_CHECK(appended == plan.appended_tokens(), appended << " vs " << plan.appended_tokens());
  if (plan.work_is_identity()) {
    FUZZ_CHECK(plan.num_work_items() == plan.num_reqs() && plan.chunk_items().empty(), "identity work");
    return;
  }
  std::vector<std::int64_t> covered(reqs.size(), 0);
  std::int64_t rows = 0;
  for (const auto& w : plan.work()) {
    const auto i = static_cast<std::size_t>(w.request);
    FUZZ_CHECK(w.kv_begin == covered[i] && w.kv_end >= w.kv_begin, "request " << i << " chunk at " << w.kv_begin);
    FUZZ_CHECK(w.kv_end - w.kv_begin <= plan.kv_chunk_tokens() || w.partial_row < 0, "chunk longer than the plan's");
    covered[i] = w.kv_end;
    if (w.partial_row >= 0) rows = std::max<std::int64_t>(rows, w.partial_row + reqs[i].q_len);
  }
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    if (reqs[i].q_len > 0) FUZZ_CHECK(covered[i] == reqs[i].kv_len, "request " << i << " covered " << covered[i]);
  }
  FUZZ_CHECK(rows == plan.partial_rows(), rows << " vs " << plan.partial_rows());
}

// -------------------------------------------------------------- driver ---

struct target {
  std::string_view name;
  void (*run)(rng_t&);
};

constexpr target targets[] = {
    {"batch_validation", fuzz_batch_validation},
    {"slicing", fuzz_slicing},
    {"sizing", fuzz_sizing},
    {"dispatch_keys", fuzz_dispatch_keys},
    {"router", fuzz_router},
    {"attention_plan", fuzz_attention_plan},
};

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t seed = 1;
  long iterations = 1000;
  std::string_view only;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string_view flag = argv[i];
    if (flag == "--seed") {
      seed = std::strtoull(argv[i + 1], nullptr, 10);
    } else if (flag == "--iterations") {
      iterations = std::strtol(argv[i + 1], nullptr, 10);
    } else if (flag == "--target") {
      only = argv[i + 1];
    } else {
      std::fprintf(stderr, "usage: planner_fuzz [--seed S] [--iterations N] [--target NAME]\n");
      return 2;
    }
  }
  int ran = 0;
  for (const target& t : targets) {
    if (!only.empty() && only != t.name) continue;
    ++ran;
    for (long it = 0; it < iterations; ++it) {
      // One generator per iteration, seeded from (seed, target, iteration):
      // any failure reproduces alone with --iterations it+1.
      std::seed_seq seq{seed, static_cast<std::uint64_t>(it), static_cast<std::uint64_t>(&t - targets)};
      rng_t rng(seq);
      try {
        t.run(rng);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "planner_fuzz: target %.*s, seed %llu, iteration %ld: %s\n",
                     static_cast<int>(t.name.size()), t.name.data(), static_cast<unsigned long long>(seed), it,
                     e.what());
        return 1;
      }
    }
    std::printf("planner_fuzz: %.*s: %ld iterations, seed %llu, all invariants held\n", static_cast<int>(t.name.size()),
                t.name.data(), iterations, static_cast<unsigned long long>(seed));
  }
  if (ran == 0) {
    std::fprintf(stderr, "planner_fuzz: no target named %.*s\n", static_cast<int>(only.size()), only.data());
    return 2;
  }
  return 0;
}
