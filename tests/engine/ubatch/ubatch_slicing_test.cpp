#include <cobatch/engine/ubatch/ubatch_slicing.hpp>

#include "engine_test_support.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

using namespace cobatch::engine;
using cobatch::engine::test::owned_batch;
using cobatch::engine::test::thrown_by;
using ints = std::vector<std::int32_t>;

namespace {

ints vec(std::span<const std::int32_t> s) { return {s.begin(), s.end()}; }

// Thresholds off, so that small hand-checked batches split.
constexpr slice_policy always_split{split_mode::token_balanced, {0, 0, 1}, 0.48};

slice_policy aligned(double share = 0.48) {
  return {split_mode::request_aligned, {0, 0, 1}, share};
}

struct expected_ubatch {
  std::int32_t token_begin, token_end, req_begin, req_end, padded;
  ints query_start_loc, seq_lens;
};

void require_ubatch(const ubatch& u, const expected_ubatch& e) {
  CHECK(u.token_begin == e.token_begin);
  CHECK(u.token_end == e.token_end);
  CHECK(u.req_begin == e.req_begin);
  CHECK(u.req_end == e.req_end);
  CHECK(u.padded_tokens == e.padded);
  CHECK(vec(u.query_start_loc) == e.query_start_loc);
  CHECK(vec(u.seq_lens) == e.seq_lens);
}

}  // namespace

TEST_CASE("a request straddling the cut appears in both micro-batches", "[engine][slicing]") {
  // Request 1 owns tokens [3, 8); the cut at 5 leaves 2 of them before and 3 after.
  const owned_batch b({3, 5, 2}, {10, 5, 7});
  const ubatch_plan plan = slice_batch(b.view(), {2, 10}, always_split);
  REQUIRE(plan.split());
  REQUIRE(plan.size() == 2);
  CHECK(plan.mode() == split_mode::token_balanced);
  // Earlier part: the 3 tokens after the cut are removed from its query and seq_len.
  require_ubatch(plan[0], {0, 5, 0, 2, 5, {0, 3, 5}, {10, 2}});
  // Later part: offsets start at 0, full seq_len (it attends to what came before).
  require_ubatch(plan[1], {5, 10, 1, 3, 5, {0, 3, 5}, {5, 7}});
}

TEST_CASE("a request spanning several cuts gets the right context in each", "[engine][slicing]") {
  // Request 1: 12 query tokens at positions 8..19 (seq_len 20), tokens [1, 13).
  const owned_batch b({1, 12, 1}, {1, 20, 3});
  const ubatch_plan plan = slice_batch(b.view(), {4, 16}, always_split);
  REQUIRE(plan.size() == 4);
  require_ubatch(plan[0], {0, 4, 0, 2, 4, {0, 1, 4}, {1, 11}});
  require_ubatch(plan[1], {4, 8, 1, 2, 4, {0, 4}, {15}});
  require_ubatch(plan[2], {8, 12, 1, 2, 4, {0, 4}, {19}});
  require_ubatch(plan[3], {12, 14, 1, 3, 4, {0, 1, 2}, {20, 3}});
  CHECK(plan[3].real_tokens() == 2);
  CHECK(plan[3].padding() == 2);
}

TEST_CASE("padding goes to the last micro-batch", "[engine][slicing]") {
  const owned_batch b({3, 5, 2}, {10, 5, 7});
  const ubatch_plan plan = slice_batch(b.view(), {2, 16}, always_split);
  REQUIRE(plan.split());
  CHECK(plan.num_tokens() == 10);
  CHECK(plan.padded_tokens() == 16);
  // ceil(16 / 2) = 8 slots each; the cut at 8 falls between requests 1 and 2.
  require_ubatch(plan[0], {0, 8, 0, 2, 8, {0, 3, 8}, {10, 5}});
  require_ubatch(plan[1], {8, 10, 2, 3, 8, {0, 2}, {7}});
  CHECK(plan[1].real_tokens() == 2);
  CHECK(plan[1].padding() == 6);
}

TEST_CASE("three micro-batches get ceil(padded / 3) slots, the last the rest", "[engine][slicing]") {
  const owned_batch b({3, 5, 2}, {10, 5, 7});
  const ubatch_plan plan = slice_batch(b.view(), {3, 12}, always_split);
  REQUIRE(plan.size() == 3);
  require_ubatch(plan[0], {0, 4, 0, 2, 4, {0, 3, 4}, {10, 1}});
  require_ubatch(plan[1], {4, 8, 1, 2, 4, {0, 4}, {5}});
  require_ubatch(plan[2], {8, 10, 2, 3, 4, {0, 2}, {7}});

  // 11 slots: ceil(11/3) = 4, so 4, 4 and 3 (2 real, 1 padding).
  const ubatch_plan odd = slice_batch(b.view(), {3, 11}, always_split);
  REQUIRE(odd.size() == 3);
  CHECK(odd[0].padded_tokens == 4);
  CHECK(odd[1].padded_tokens == 4);
  CHECK(odd[2].padded_tokens == 3);
  CHECK(odd[2].real_tokens() == 2);
}

TEST_CASE("a plan whose last micro-batch would hold only padding is not split", "[engine][slicing]") {
  const owned_batch b({3, 5, 2}, {10, 5, 7});
  // ceil(32 / 2) = 16 >= 10 real tokens: the second half is all padding.
  const ubatch_plan plan = slice_batch(b.view(), {2, 32}, always_split);
  CHECK_FALSE(plan.split());
  CHECK(plan.outcome() == split_outcome::empty_last_ubatch);
  REQUIRE(plan.size() == 1);
  require_ubatch(plan[0], {0, 10, 0, 3, 32, {0, 3, 8, 10}, {10, 5, 7}});

  // 9 real tokens padded to 10 in 4 micro-batches of ceil(10/4) = 3 slots:
  // the last would start at token 9, past every real token.
  const owned_batch nine = owned_batch::with_context({4, 5}, 0);
  const ubatch_plan over = slice_batch(nine.view(), {4, 10}, always_split);
  CHECK(over.outcome() == split_outcome::empty_last_ubatch);
  CHECK(over.size() == 1);
}

TEST_CASE("N = 1 returns the whole batch as one micro-batch", "[engine][slicing]") {
  const owned_batch b({3, 5, 2}, {10, 5, 7});
  const ubatch_plan plan = slice_batch(b.view(), {1, 12}, always_split);
  CHECK(plan.outcome() == split_outcome::single_requested);
  REQUIRE(plan.size() == 1);
  require_ubatch(plan[0], {0, 10, 0, 3, 12, {0, 3, 8, 10}, {10, 5, 7}});
}

TEST_CASE("N = num_tokens gives one token per micro-batch", "[engine][slicing]") {
  const owned_batch b({3, 5, 2}, {10, 5, 7});
  const ubatch_plan plan = slice_batch(b.view(), {10, 10}, always_split);
  REQUIRE(plan.size() == 10);
  const ints owner{0, 0, 0, 1, 1, 1, 1, 1, 2, 2};
  const ints seq{8, 9, 10, 1, 2, 3, 4, 5, 6, 7};  // context grows by one each token
  for (std::int32_t k = 0; k < 10; ++k) {
    INFO("micro-batch " << k);
    require_ubatch(plan[k], {k, k + 1, owner[k], owner[k] + 1, 1, {0, 1}, {seq[k]}});
  }
}

TEST_CASE("thresholds keep small batches whole", "[engine][slicing]") {
  const slice_policy defaults{};
  SECTION("uniform decode against the decode threshold (32)") {
    const owned_batch small = owned_batch::with_context(ints(31, 1), 100);
    const ubatch_plan p = slice_batch(small.view(), {2, 32}, defaults);
    CHECK(p.outcome() == split_outcome::below_decode_threshold);
    CHECK(p.size() == 1);
    CHECK(p[0].padded_tokens == 32);
    const owned_batch enough = owned_batch::with_context(ints(32, 1), 100);
    CHECK(slice_batch(enough.view(), {2, 32}, defaults).outcome() == split_outcome::split);
  }
  SECTION("anything else against the prefill threshold (512)") {
    ints q(511, 1);
    q[0] = 2;
    q.pop_back();  // 510 requests: 511 tokens
    const owned_batch small = owned_batch::with_context(q, 0);
    REQUIRE(small.num_tokens() == 511);
    CHECK(slice_batch(small.view(), {2, 512}, defaults).outcome() == split_outcome::below_prefill_threshold);
    q.push_back(1);
    const owned_batch enough = owned_batch::with_context(q, 0);
    REQUIRE(enough.num_tokens() == 512);
    CHECK(slice_batch(enough.view(), {2, 512}, defaults).outcome() == split_outcome::split);
  }
  SECTION("speculative decode counts as decode at its own query length") {
    const owned_batch spec = owned_batch::with_context(ints(20, 2), 50);  // 40 tokens
    slice_policy p;
    CHECK(slice_batch(spec.view(), {2, 40}, p).outcome() == split_outcome::below_prefill_threshold);
    p.thresholds.uniform_decode_query_len = 2;
    CHECK(slice_batch(spec.view(), {2, 40}, p).outcome() == split_outcome::split);
    p.thresholds.decode_tokens = 41;
    CHECK(slice_batch(spec.view(), {2, 40}, p).outcome() == split_outcome::below_decode_threshold);
  }
  SECTION("N = 1 is reported as asked for, not as below a threshold") {
    const owned_batch small = owned_batch::with_context(ints(4, 1), 3);
    CHECK(slice_batch(small.view(), {1, 4}, defaults).outcome() == split_outcome::single_requested);
  }
}

TEST_CASE("request-aligned cuts fall between requests", "[engine][slicing]") {
  SECTION("an exact balance") {
    const owned_batch b({4, 4, 4, 4}, {4, 9, 4, 6});
    const ubatch_plan plan = slice_batch(b.view(), {2, 20}, aligned());
    REQUIRE(plan.split());
    CHECK(plan.mode() == split_mode::request_aligned);
    require_ubatch(plan[0], {0, 8, 0, 2, 8, {0, 4, 8}, {4, 9}});
    require_ubatch(plan[1], {8, 16, 2, 4, 12, {0, 4, 8}, {4, 6}});
  }
  SECTION("the nearest boundary to the middle, within 48%") {
    // Boundaries at 0, 49, 100: 49 / 100 tokens on the smaller side.
    const owned_batch b = owned_batch::with_context({49, 51}, 0);
    const ubatch_plan plan = slice_batch(b.view(), {2, 100}, aligned());
    CHECK(plan.mode() == split_mode::request_aligned);
    CHECK(plan[0].token_end == 49);
    CHECK(plan[1].req_begin == 1);
  }
  SECTION("below 48% on the smaller side falls back to the token cut") {
    const owned_batch b = owned_batch::with_context({47, 53}, 0);
    const ubatch_plan plan = slice_batch(b.view(), {2, 100}, aligned());
    REQUIRE(plan.split());
    CHECK(plan.mode() == split_mode::token_balanced);
    CHECK(plan.requested_mode() == split_mode::request_aligned);
    CHECK(plan[0].token_end == 50);
    CHECK(vec(plan[0].seq_lens) == ints{47, 3});
  }
  SECTION("the threshold is configurable") {
    const owned_batch b({10, 1, 1, 1, 1, 1, 1}, {10, 1, 1, 1, 1, 1, 1});
    CHECK(slice_batch(b.view(), {2, 16}, aligned()).mode() == split_mode::token_balanced);
    const ubatch_plan loose = slice_batch(b.view(), {2, 16}, aligned(0.3));  // 6 of 16 = 37.5%
    CHECK(loose.mode() == split_mode::request_aligned);
    CHECK(loose[0].token_end == 10);
    CHECK(loose[1].padded_tokens == 6);
  }
  SECTION("three and four ways") {
    const owned_batch six = owned_batch::with_context({5, 5, 5, 5, 5, 5}, 1);
    const ubatch_plan three = slice_batch(six.view(), {3, 30}, aligned());
    REQUIRE(three.size() == 3);
    CHECK(three.mode() == split_mode::request_aligned);
    CHECK(three[0].token_end == 10);
    CHECK(three[1].token_end == 20);
    CHECK(three[2].req_begin == 4);

    const owned_batch eight = owned_batch::with_context(ints(8, 4), 2);
    const ubatch_plan four = slice_batch(eight.view(), {4, 40}, aligned());
    REQUIRE(four.size() == 4);
    CHECK(four.mode() == split_mode::request_aligned);
    for (std::int32_t k = 0; k < 4; ++k) {
      require_ubatch(four[k], {8 * k, 8 * k + 8, 2 * k, 2 * k + 2, k == 3 ? 16 : 8, {0, 4, 8}, {6, 6}});
    }
  }
  SECTION("one big request leaves N-way cuts uneven, so the token cut is used") {
    const owned_batch b = owned_batch::with_context({20, 5, 5}, 0);
    const ubatch_plan plan = slice_batch(b.view(), {3, 30}, aligned());
    CHECK(plan.mode() == split_mode::token_balanced);
    CHECK(plan[0].token_end == 10);
    CHECK(plan[1].token_end == 20);
  }
  SECTION("fewer requests than micro-batches cannot be aligned") {
    const owned_batch b = owned_batch::with_context({10, 10}, 0);
    const ubatch_plan plan = slice_batch(b.view(), {3, 20}, aligned(0.0));
    CHECK(plan.mode() == split_mode::token_balanced);
    CHECK(plan.size() == 3);
  }
}

TEST_CASE("requests without query tokens are never dropped", "[engine][slicing]") {
  SECTION("at a cut they stay with the earlier micro-batch") {
    const owned_batch b({2, 0, 0, 2}, {2, 5, 6, 2});
    const ubatch_plan plan = slice_batch(b.view(), {2, 4}, always_split);
    require_ubatch(plan[0], {0, 2, 0, 3, 2, {0, 2, 2, 2}, {2, 5, 6}});
    require_ubatch(plan[1], {2, 4, 3, 4, 2, {0, 2}, {2}});
  }
  SECTION("at the ends") {
    const owned_batch b({0, 2, 2, 0}, {3, 2, 2, 4});
    const ubatch_plan plan = slice_batch(b.view(), {2, 4}, aligned());
    CHECK(plan.mode() == split_mode::request_aligned);
    require_ubatch(plan[0], {0, 2, 0, 2, 2, {0, 0, 2}, {3, 2}});
    require_ubatch(plan[1], {2, 4, 2, 4, 2, {0, 2, 2}, {2, 4}});
  }
}

TEST_CASE("invalid requests and policies are rejected before any work", "[engine][slicing]") {
  const owned_batch b({3, 5, 2}, {10, 5, 7});
  struct bad_case {
    slice_request request;
    slice_policy policy;
    errc code;
    std::string text;
  };
  slice_policy negative_decode = always_split;
  negative_decode.thresholds.decode_tokens = -1;
  slice_policy negative_prefill = always_split;
  negative_prefill.thresholds.prefill_tokens = -5;
  slice_policy zero_query = always_split;
  zero_query.thresholds.uniform_decode_query_len = 0;
  slice_policy wide_share = always_split;
  wide_share.min_request_aligned_share = 0.6;
  slice_policy unknown = always_split;
  unknown.mode = static_cast<split_mode>(7);
  const std::vector<bad_case> cases{
      {{0, 10}, always_split, errc::invalid_argument, "num_ubatches=0 must be at least 1"},
      {{-3, 10}, always_split, errc::invalid_argument, "num_ubatches=-3"},
      {{11, 12}, always_split, errc::too_many_ubatches, "num_ubatches=11 exceeds num_tokens=10"},
      {{2, 9}, always_split, errc::invalid_argument, "padded_tokens=9 is less than num_tokens=10"},
      {{2, 10}, negative_decode, errc::negative_length, "thresholds.decode_tokens=-1 is negative"},
      {{2, 10}, negative_prefill, errc::negative_length, "thresholds.prefill_tokens=-5 is negative"},
      {{2, 10}, zero_query, errc::invalid_argument, "uniform_decode_query_len=0 must be at least 1"},
      {{2, 10}, wide_share, errc::invalid_argument, "min_request_aligned_share=0.6 is outside [0, 0.5]"},
      {{2, 10}, unknown, errc::unknown_mode, "slice_policy::mode=7 is not a split_mode"},
  };
  for (const bad_case& c : cases) {
    INFO(c.text);
    const engine_error e = thrown_by([&] { (void)slice_batch(b.view(), c.request, c.policy); });
    CHECK(e.code() == c.code);
    CHECK_THAT(e.what(), Catch::Matchers::Contains(c.text));

    ubatch_plan plan = slice_batch(b.view(), {2, 10}, always_split);
    std::error_code ec;
    slice_batch(b.view(), c.request, c.policy, plan, ec);
    CHECK(ec == c.code);
    CHECK(plan.empty());
  }

  SECTION("a bad batch reports the batch's error") {
    const owned_batch bad({3, 5}, {10, 4});
    const engine_error e = thrown_by([&] { (void)slice_batch(bad.view(), {2, 8}, always_split); });
    CHECK(e.code() == errc::length_mismatch);
    CHECK_THAT(e.what(), Catch::Matchers::Contains("seq_lens[1]=4 is less than request 1's query length 5"));
  }
  SECTION("the throwing reuse overload leaves the plan empty too") {
    ubatch_plan plan = slice_batch(b.view(), {2, 10}, always_split);
    CHECK(thrown_by([&] { slice_batch(b.view(), {0, 10}, always_split, plan); }).code() == errc::invalid_argument);
    CHECK(plan.empty());
  }
  SECTION("at() checks its index") {
    const ubatch_plan plan = slice_batch(b.view(), {2, 10}, always_split);
    const engine_error e = thrown_by([&] { (void)plan.at(2); });
    CHECK(e.code() == errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Matchers::Contains("micro-batch 2 is out of range of a plan of 2"));
    CHECK(plan.at(1).token_begin == 5);
  }
}

TEST_CASE("slicing into a plan reuses its storage", "[engine][slicing]") {
  const owned_batch b({3, 5, 2}, {10, 5, 7});
  ubatch_plan plan;
  CHECK(plan.empty());
  slice_batch(b.view(), {2, 10}, always_split, plan);
  const std::int32_t* first = plan[0].query_start_loc.data();
  const owned_batch other({2, 6, 2}, {2, 9, 3});
  slice_batch(other.view(), {2, 12}, always_split, plan);
  CHECK(plan[0].query_start_loc.data() == first);
  require_ubatch(plan[0], {0, 6, 0, 2, 6, {0, 2, 6}, {2, 7}});
  require_ubatch(plan[1], {6, 10, 1, 3, 6, {0, 2, 4}, {9, 3}});
}

TEST_CASE("micro-batch views share the inputs' memory", "[engine][slicing]") {
  const owned_batch b({3, 5, 2}, {10, 5, 7});
  const ubatch_plan plan = slice_batch(b.view(), {2, 12}, always_split);  // slots 6 and 6: 6 + 4 real
  std::vector<std::int32_t> ids(12);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = 100 + static_cast<std::int32_t>(i);
  constexpr std::int64_t hidden = 3, stride = 5;
  std::vector<float> embeds(12 * stride);
  for (std::size_t i = 0; i < embeds.size(); ++i) embeds[i] = static_cast<float>(i);
  const token_rows<const float> all(embeds.data(), 12, hidden, stride);

  SECTION("1-D spans") {
    const std::span<std::int32_t> first = ubatch_rows(std::span(ids), plan, 0);
    CHECK(first.data() == ids.data());
    CHECK(vec(first) == ints{100, 101, 102, 103, 104, 105});
    const std::span<std::int32_t> second = ubatch_rows(std::span(ids), plan, 1);
    CHECK(second.data() == ids.data() + 6);
    CHECK(vec(second) == ints{106, 107, 108, 109});
    const std::span<std::int32_t> padded = ubatch_rows(std::span(ids), plan, 1, token_extent::padded);
    CHECK(padded.data() == ids.data() + 6);
    CHECK(padded.size() == 6);
    first[0] = -1;  // writes land in the caller's buffer
    CHECK(ids[0] == -1);
  }
  SECTION("2-D rows with a stride") {
    const token_rows<const float> second = ubatch_rows(all, plan, 1);
    CHECK(second.data() == embeds.data() + 6 * stride);
    CHECK(second.num_rows() == 4);
    CHECK(second.row_stride() == stride);
    for (std::int64_t r = 0; r < second.num_rows(); ++r) {
      for (std::int64_t c = 0; c < hidden; ++c) CHECK(second(r, c) == all(6 + r, c));
    }
    CHECK(ubatch_rows(all, plan, 1, token_extent::padded).num_rows() == 6);
  }
  SECTION("out of range") {
    engine_error e = thrown_by([&] { (void)ubatch_rows(all, plan, 2); });
    CHECK(e.code() == errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Matchers::Contains("micro-batch 2 is out of range of a plan of 2"));
    CHECK(thrown_by([&] { (void)ubatch_rows(all, plan, -1); }).code() == errc::invalid_argument);
    // Ten rows hold the real tokens but not the padded ones.
    const token_rows<const float> real_only = all.rows(0, 10);
    CHECK(ubatch_rows(real_only, plan, 1).num_rows() == 4);
    e = thrown_by([&] { (void)ubatch_rows(real_only, plan, 1, token_extent::padded); });
    CHECK(e.code() == errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Matchers::Contains("micro-batch 1 covers rows [6, 12) but the input has 10 rows"));
    e = thrown_by([&] { (void)ubatch_rows(std::span(ids).first(8), plan, 1); });
    CHECK_THAT(e.what(), Catch::Matchers::Contains("covers rows [6, 10) but the input has 8 rows"));
  }
}

TEST_CASE("random batches keep every invariant", "[engine][slicing][property]") {
  std::mt19937 rng(20240611u);
  auto uniform = [&](std::int32_t lo, std::int32_t hi) {
    return std::uniform_int_distribution<std::int32_t>(lo, hi)(rng);
  };
  std::int32_t split_count = 0, aligned_count = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const std::int32_t reqs = uniform(1, 200);
    ints q(static_cast<std::size_t>(reqs)), seqs(static_cast<std::size_t>(reqs));
    const bool decode_only = uniform(0, 4) == 0;
    for (std::int32_t i = 0; i < reqs; ++i) {
      const std::int32_t roll = uniform(0, 9);
      q[i] = decode_only ? 1 : roll == 0 ? 0 : roll < 6 ? 1 : uniform(2, 300);
      seqs[i] = q[i] + uniform(0, 2000);
    }
    if (std::all_of(q.begin(), q.end(), [](std::int32_t v) { return v == 0; })) q[0] = 1;
    seqs[0] = std::max(seqs[0], q[0]);
    const owned_batch b(q, seqs);
    const std::int32_t tokens = b.num_tokens();
    const std::int32_t n = uniform(1, std::min(8, tokens));
    const std::int32_t padded = tokens + uniform(0, 64);
    slice_policy policy;
    policy.mode = uniform(0, 1) == 0 ? split_mode::token_balanced : split_mode::request_aligned;
    if (uniform(0, 1) == 0) policy.thresholds = {0, 0, 1};
    INFO("trial " << trial << ": " << reqs << " requests, " << tokens << " tokens, N=" << n
                  << ", padded " << padded);

    const ubatch_plan plan = slice_batch(b.view(), {n, padded}, policy);
    REQUIRE(plan.size() == (plan.split() ? n : 1));
    split_count += plan.split() ? 1 : 0;
    aligned_count += plan.split() && plan.mode() == split_mode::request_aligned ? 1 : 0;

    std::int64_t padded_sum = 0;
    std::int32_t next_token = 0;
    ints tokens_seen(static_cast<std::size_t>(reqs), 0);
    for (std::int32_t k = 0; k < plan.size(); ++k) {
      const ubatch u = plan[k];
      INFO("micro-batch " << k);
      padded_sum += u.padded_tokens;
      // Real tokens tile [0, tokens) in order: each appears in exactly one micro-batch.
      REQUIRE(u.token_begin == next_token);
      REQUIRE(u.real_tokens() > 0);
      REQUIRE(u.padding() >= 0);
      if (k + 1 < plan.size()) REQUIRE(u.padding() == 0);
      next_token = u.token_end;
      if (plan.split() && plan.mode() == split_mode::token_balanced) {
        REQUIRE(u.token_begin == k * ((padded + n - 1) / n));
      }
      // Request ranges chain, overlapping by at most the one straddling request.
      if (k > 0) {
        const ubatch prev = plan[k - 1];
        const bool straddles = b.query_start_loc[static_cast<std::size_t>(u.req_begin)] < u.token_begin;
        REQUIRE(u.req_begin == (straddles ? prev.req_end - 1 : prev.req_end));
        if (plan.mode() == split_mode::request_aligned) REQUIRE_FALSE(straddles);
      } else {
        REQUIRE(u.req_begin == 0);
      }
      // Own metadata is a valid batch; it matches the slice of the original.
      REQUIRE_NOTHROW(validate_batch(u.as_batch()));
      REQUIRE(u.query_start_loc.size() == static_cast<std::size_t>(u.num_reqs()) + 1);
      for (std::int32_t j = 0; j < u.num_reqs(); ++j) {
        const std::int32_t r = u.req_begin + j;
        const std::int32_t lo = std::max(b.query_start_loc[r], u.token_begin);
        const std::int32_t hi = std::min(b.query_start_loc[r + 1], u.token_end);
        REQUIRE(u.query_start_loc[j] == lo - u.token_begin);
        REQUIRE(u.query_start_loc[j + 1] - u.query_start_loc[j] == hi - lo);
        const std::int32_t after = std::max(0, b.query_start_loc[r + 1] - u.token_end);
        REQUIRE(u.seq_lens[j] == seqs[r] - after);
        tokens_seen[r] += hi - lo;
      }
    }
    REQUIRE(next_token == tokens);
    REQUIRE(plan[plan.size() - 1].req_end == reqs);
    REQUIRE(padded_sum == padded);
    for (std::int32_t r = 0; r < reqs; ++r) REQUIRE(tokens_seen[r] == q[r]);
  }
  // The generator must exercise both paths, or the loop proves little.
  CHECK(split_count > 100);
  CHECK(aligned_count > 20);
}

TEST_CASE("a padded uniform-decode micro-batch carries empty requests up to the graph's rows",
          "[engine][slicing][request_padding]") {
  // Five decode requests padded to a graph of 8 tokens, that is 8 requests.
  const owned_batch b = owned_batch::with_context({1, 1, 1, 1, 1}, 9);
  SECTION("split in two: the last micro-batch pads its requests") {
    const ubatch_plan plan = slice_batch(b.view(), {2, 8}, always_split);
    REQUIRE(plan.size() == 2);
    // The first holds 4 real tokens and no padding: nothing to add.
    CHECK(plan[0].padded_reqs() == 4);
    CHECK(vec(plan[0].padded_query_start_loc) == vec(plan[0].query_start_loc));
    CHECK(vec(plan[0].padded_seq_lens) == vec(plan[0].seq_lens));
    // The second: 1 real request and 3 rows of padding, so 3 empty requests,
    // as a graph captured for 4 requests expects.
    const ubatch last = plan[1];
    CHECK(last.num_reqs() == 1);
    CHECK(last.padded_tokens == 4);
    CHECK(last.padded_reqs() == 4);
    CHECK(vec(last.padded_query_start_loc) == ints{0, 1, 1, 1, 1});
    CHECK(vec(last.padded_seq_lens) == ints{10, 0, 0, 0});
    // The real metadata is the padded one's prefix, unchanged.
    CHECK(vec(last.query_start_loc) == ints{0, 1});
    CHECK(vec(last.seq_lens) == ints{10});
    // The padded form is a valid batch of its own.
    const batch_shape shape = validate_batch(last.as_padded_batch());
    CHECK(shape.num_reqs == 4);
    CHECK(shape.num_tokens == 1);
  }
  SECTION("not split: the whole batch pads to the graph's requests") {
    const ubatch_plan plan = slice_batch(b.view(), {1, 8}, always_split);
    REQUIRE(plan.size() == 1);
    CHECK(plan[0].padded_reqs() == 8);
    CHECK(vec(plan[0].padded_query_start_loc) == ints{0, 1, 2, 3, 4, 5, 5, 5, 5});
    CHECK(vec(plan[0].padded_seq_lens) == ints{10, 10, 10, 10, 10, 0, 0, 0});
  }
}

TEST_CASE("request padding counts rows in query lengths of the uniform decode", "[engine][slicing][request_padding]") {
  // Speculative decode: every request schedules 2 tokens. 3 requests (6
  // tokens) padded to 10 rows: a graph for 5 requests, so 2 empty ones.
  slice_policy spec = always_split;
  spec.thresholds.uniform_decode_query_len = 2;
  const owned_batch b = owned_batch::with_context({2, 2, 2}, 5);
  const ubatch_plan plan = slice_batch(b.view(), {1, 10}, spec);
  REQUIRE(plan.size() == 1);
  CHECK(plan[0].padded_reqs() == 5);
  CHECK(vec(plan[0].padded_query_start_loc) == ints{0, 2, 4, 6, 6, 6});
  CHECK(vec(plan[0].padded_seq_lens) == ints{7, 7, 7, 0, 0});
}

TEST_CASE("batches that are not uniform decode get no padding requests", "[engine][slicing][request_padding]") {
  // Mixed prefill and decode: padding rows go to a piecewise graph, which
  // needs no request metadata for them.
  const owned_batch b({3, 1, 4}, {3, 6, 4});
  const ubatch_plan plan = slice_batch(b.view(), {1, 12}, always_split);
  REQUIRE(plan.size() == 1);
  CHECK(plan[0].padding() == 4);
  CHECK(plan[0].padded_reqs() == plan[0].num_reqs());
  CHECK(vec(plan[0].padded_query_start_loc) == vec(plan[0].query_start_loc));
  CHECK(vec(plan[0].padded_seq_lens) == vec(plan[0].seq_lens));
  // Uniform, but not in the decode query length the policy names.
  const owned_batch twos = owned_batch::with_context({2, 2}, 1);
  const ubatch_plan p2 = slice_batch(twos.view(), {1, 8}, always_split);
  CHECK(p2[0].padded_reqs() == 2);
}
