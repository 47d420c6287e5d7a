#include <cobatch/engine/ubatch/ubatch_sizing.hpp>

#include "engine_test_support.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

using namespace cobatch::engine;
using namespace std::chrono_literals;
using cobatch::engine::test::thrown_by;

namespace {

// 0.8 of 1000 free bytes: an 800-byte budget per micro-batch.
activation_memory memory_with(std::uint64_t bytes_per_token) { return {1000, 0.8, bytes_per_token}; }

double ns(fractional_ns d) { return d.count(); }

// Checks each of a choice's count, reason and predicted step time (ns).
void check_choice(const timing_choice& c, std::int32_t num_ubatches, timing_reason reason, double predicted_ns) {
  CHECK(c.num_ubatches == num_ubatches);
  CHECK(c.reason == reason);
  CHECK(ns(c.predicted) == Approx(predicted_ns));
}

}  // namespace

TEST_CASE("memory picks the fewest micro-batches that fit the budget", "[engine][sizing][memory]") {
  const activation_memory m = memory_with(10);  // 80 tokens per micro-batch at most
  struct row {
    std::int64_t tokens;
    ubatch_count_limits limits;
    std::int32_t count;
    std::int64_t each;
  };
  const std::vector<row> rows{
      {80, {1, 4}, 1, 80},   // exactly the budget fits ("at most", not "below")
      {81, {1, 4}, 2, 41},
      {200, {1, 4}, 3, 67},  // ceil(200 / 80) = 3, and ceil(200 / 3) = 67 tokens
      {10, {2, 4}, 2, 5},    // the minimum holds even when one would fit
      {1, {2, 4}, 1, 1},     // but never more micro-batches than tokens
  };
  for (const row& r : rows) {
    INFO(r.tokens << " tokens");
    const memory_fit f = fit_to_memory(r.tokens, m, r.limits);
    CHECK(f.num_ubatches == r.count);
    CHECK(f.tokens_per_ubatch == r.each);
    CHECK(f.bytes_per_ubatch == static_cast<std::uint64_t>(r.each) * 10);
    CHECK(f.budget_bytes == 800);
  }
  // One token per micro-batch when that is all that fits.
  const memory_fit tight = fit_to_memory(3, {10, 1.0, 10}, {1, 8});
  CHECK(tight.num_ubatches == 3);
  CHECK(tight.bytes_per_ubatch == 10);
}

TEST_CASE("memory that does not fit says by how much", "[engine][sizing][memory]") {
  engine_error e = thrown_by([] { (void)fit_to_memory(400, memory_with(10), {1, 4}); });
  CHECK(e.code() == errc::no_capacity);
  CHECK_THAT(e.what(), Catch::Matchers::Contains(
                           "even 4 micro-batches of up to 100 tokens need 1000 activation bytes each, 200 more "
                           "than the budget of 800 bytes (0.8 of 1000 free); it takes 5 micro-batches"));

  e = thrown_by([] { (void)fit_to_memory(10, memory_with(900), {1, 4}); });
  CHECK(e.code() == errc::no_capacity);
  CHECK_THAT(e.what(), Catch::Matchers::Contains("one token needs 900 activation bytes, 100 more than the budget of 800"));

  std::error_code ec;
  const memory_fit none = fit_to_memory(400, memory_with(10), {1, 4}, ec);
  CHECK(ec == errc::no_capacity);
  CHECK(none.num_ubatches == 0);
  const memory_fit some = fit_to_memory(200, memory_with(10), {1, 4}, ec);
  CHECK_FALSE(ec);
  CHECK(some.num_ubatches == 3);

  // The whole of a huge device is usable without overflow.
  const std::uint64_t huge = std::numeric_limits<std::uint64_t>::max();
  CHECK(fit_to_memory(1 << 20, {huge, 1.0, 1 << 20}, {1, 4}).num_ubatches == 1);
}

TEST_CASE("bad memory arguments are rejected", "[engine][sizing][memory]") {
  const auto code_of = [](std::int64_t tokens, activation_memory m, ubatch_count_limits l) {
    return thrown_by([&] { (void)fit_to_memory(tokens, m, l); }).code();
  };
  CHECK(code_of(0, memory_with(10), {1, 4}) == errc::empty_batch);
  CHECK(code_of(-1, memory_with(10), {1, 4}) == errc::negative_length);
  CHECK(code_of(10, memory_with(10), {0, 4}) == errc::invalid_argument);
  CHECK(code_of(10, memory_with(10), {3, 2}) == errc::invalid_argument);
  CHECK(code_of(10, memory_with(0), {1, 4}) == errc::invalid_argument);
  CHECK(code_of(10, {1000, 0.0, 10}, {1, 4}) == errc::invalid_argument);
  CHECK(code_of(10, {1000, 1.5, 10}, {1, 4}) == errc::invalid_argument);
  CHECK(code_of(10, {1000, std::nan(""), 10}, {1, 4}) == errc::invalid_argument);
  const engine_error e = thrown_by([] { (void)fit_to_memory(10, memory_with(10), {3, 2}); });
  CHECK_THAT(e.what(), Catch::Matchers::Contains("limits.max=2 is less than limits.min=3"));
}

TEST_CASE("the timing model learns per-token cost net of overlap and overhead", "[engine][sizing][timing]") {
  step_timing_model model({0.5, 1000ns, 0.25, 16'500ns});
  CHECK_FALSE(model.cost_per_token(step_phase::prefill));
  CHECK_FALSE(model.predict(step_phase::prefill, 100, 1));

  model.record({step_phase::prefill, 100, 11'000ns, 1});  // (11000 - 1000) / 100
  CHECK(ns(*model.cost_per_token(step_phase::prefill)) == 100.0);
  // At 2 micro-batches 1 - 0.25 + 0.25/2 = 0.875 of the work shows, plus 2000 overhead:
  // (7250 - 2000) / (100 * 0.875) = 60, averaged with 100 at alpha 0.5.
  model.record({step_phase::prefill, 100, 7'250ns, 2});
  CHECK(ns(*model.cost_per_token(step_phase::prefill)) == Approx(80.0));
  CHECK(model.samples(step_phase::prefill) == 2);
  CHECK(model.samples(step_phase::decode) == 0);

  CHECK(ns(*model.predict(step_phase::prefill, 200, 1)) == Approx(17'000.0));
  CHECK(ns(*model.predict(step_phase::prefill, 200, 2)) == Approx(16'000.0));

  SECTION("the fewest micro-batches that meet the target") {
    check_choice(model.choose(step_phase::prefill, 100, {1, 4}), 1, timing_reason::target_met, 9'000.0);
    check_choice(model.choose(step_phase::prefill, 200, {1, 4}), 2, timing_reason::target_met, 16'000.0);
    CHECK(model.choose(step_phase::prefill, 200, {3, 4}).num_ubatches == 3);  // clamped up
  }
  SECTION("the fastest count when none meets it") {
    // 400 tokens: 33000, 30000, 29666.7, 30000 ns: overhead overtakes overlap after 3.
    check_choice(model.choose(step_phase::prefill, 400, {1, 8}), 3, timing_reason::best_effort, 29'666.6667);
    CHECK(model.choose(step_phase::prefill, 400, {1, 2}).num_ubatches == 2);  // clamped down
  }
  SECTION("phases are learned apart") {
    check_choice(model.choose(step_phase::decode, 400, {2, 4}), 2, timing_reason::no_history, 0.0);
  }
}

TEST_CASE("a recorded history gives the same counts every time", "[engine][sizing][timing]") {
  struct step {
    step_sample sample;
    std::int32_t prefill_count;  // chosen for a 1000-token prefill after this sample
    timing_reason reason;
  };
  // alpha 0.5, 2000 ns per micro-batch, half the work overlappable, 20 us target.
  // Samples ran unsplit, so each teaches (elapsed - 2000) / tokens.
  const std::vector<step> history{
      {{step_phase::prefill, 1000, 12'000ns, 1}, 1, timing_reason::target_met},   // c = 10
      {{step_phase::prefill, 1000, 52'000ns, 1}, 3, timing_reason::best_effort},  // c = 30
      {{step_phase::decode, 500, 2'500ns, 1}, 3, timing_reason::best_effort},     // decode only
      {{step_phase::prefill, 1000, 10'000ns, 1}, 2, timing_reason::target_met},   // c = 19
      {{step_phase::prefill, 1000, 4'000ns, 1}, 1, timing_reason::target_met},    // c = 10.5
  };
  const timing_options options{0.5, 2000ns, 0.5, 20'000ns};
  step_timing_model first(options), second(options);
  const std::vector<double> costs{10.0, 30.0, 30.0, 19.0, 10.5};
  for (std::size_t i = 0; i < history.size(); ++i) {
    INFO("after sample " << i);
    first.record(history[i].sample);
    second.record(history[i].sample);
    CHECK(ns(*first.cost_per_token(step_phase::prefill)) == Approx(costs[i]));
    const timing_choice a = first.choose(step_phase::prefill, 1000, {1, 4});
    const timing_choice b = second.choose(step_phase::prefill, 1000, {1, 4});
    CHECK(a.num_ubatches == history[i].prefill_count);
    CHECK(a.reason == history[i].reason);
    CHECK(a.num_ubatches == b.num_ubatches);
    CHECK(a.predicted == b.predicted);  // bit for bit
  }
  CHECK(ns(*first.cost_per_token(step_phase::decode)) == 1.0);
  CHECK(first.choose(step_phase::decode, 4096, {1, 4}).num_ubatches == 1);
}

TEST_CASE("samples are normalised by the count they ran at", "[engine][sizing][timing]") {
  step_timing_model model({1.0, 100ns, 0.5, 7'000ns});
  model.record({step_phase::decode, 1000, 10'100ns, 1});  // c = 10
  // 10100, 7700, 6966.7: three meet the target.
  CHECK(model.choose(step_phase::decode, 1000, {1, 8}).num_ubatches == 3);
  // (5400 - 400) / (1000 * (0.5 + 0.5/4)) = 8; alpha 1 keeps only the latest.
  model.record({step_phase::decode, 1000, 5'400ns, 4});
  CHECK(ns(*model.cost_per_token(step_phase::decode)) == Approx(8.0));
  CHECK(model.choose(step_phase::decode, 1000, {1, 8}).num_ubatches == 2);  // 8100, 6200
  // A step quicker than its overhead estimate teaches zero, not a negative cost.
  model.record({step_phase::decode, 10, 50ns, 1});
  CHECK(ns(*model.cost_per_token(step_phase::decode)) == 0.0);
  CHECK(model.choose(step_phase::decode, 1000, {1, 8}).num_ubatches == 1);
}

TEST_CASE("bad timing options and samples are rejected", "[engine][sizing][timing]") {
  const auto option_error = [](timing_options o) { return thrown_by([&] { step_timing_model m(o); }); };
  CHECK(option_error({0.0, 1ns, 0.2, 1ms}).code() == errc::invalid_argument);
  CHECK(option_error({1.5, 1ns, 0.2, 1ms}).code() == errc::invalid_argument);
  CHECK(option_error({std::nan(""), 1ns, 0.2, 1ms}).code() == errc::invalid_argument);
  CHECK(option_error({0.5, -1ns, 0.2, 1ms}).code() == errc::invalid_argument);
  CHECK_THAT(option_error({0.5, 1ns, 0.6, 1ms}).what(),
             Catch::Matchers::Contains("overlappable_fraction=0.6 is outside [0, 0.5]"));
  CHECK_THAT(option_error({0.5, 1ns, 0.2, 0ns}).what(), Catch::Matchers::Contains("target_step_time=0ns"));

  step_timing_model model({0.5, 1ns, 0.2, 1ms});
  struct bad {
    step_sample sample;
    errc code;
    std::string text;
  };
  const std::vector<bad> samples{
      {{step_phase::decode, 0, 1us, 1}, errc::empty_batch, "step_sample::tokens=0"},
      {{step_phase::decode, -4, 1us, 1}, errc::negative_length, "step_sample::tokens=-4"},
      {{step_phase::decode, 4, -1ns, 1}, errc::negative_length, "step_sample::elapsed=-1ns is negative"},
      {{step_phase::decode, 4, 1us, 0}, errc::invalid_argument, "step_sample::num_ubatches=0"},
      {{static_cast<step_phase>(9), 4, 1us, 1}, errc::unknown_mode, "step_sample::phase=9"},
  };
  for (const bad& b : samples) {
    INFO(b.text);
    const engine_error e = thrown_by([&] { model.record(b.sample); });
    CHECK(e.code() == b.code);
    CHECK_THAT(e.what(), Catch::Matchers::Contains(b.text));
    std::error_code ec;
    model.record(b.sample, ec);
    CHECK(ec == b.code);
  }
  CHECK(model.samples(step_phase::decode) == 0);  // nothing bad was learned

  CHECK(thrown_by([&] { (void)model.choose(step_phase::decode, 0, {1, 4}); }).code() == errc::empty_batch);
  CHECK(thrown_by([&] { (void)model.choose(step_phase::decode, 8, {0, 4}); }).code() == errc::invalid_argument);
  CHECK(thrown_by([&] { (void)model.choose(static_cast<step_phase>(2), 8, {1, 4}); }).code() == errc::unknown_mode);
}

TEST_CASE("memory sets a floor, timing chooses above it", "[engine][sizing]") {
  step_timing_model timing({1.0, 100ns, 0.5, 7'000ns});
  timing.record({step_phase::decode, 1000, 10'100ns, 1});  // decode wants 3 for 1000 tokens

  SECTION("timing wins where memory allows it") {
    const sizing_decision d = choose_ubatch_count(step_phase::decode, 1000, memory_with(1), timing, {1, 8});
    CHECK(d.num_ubatches == 3);
    CHECK(d.reason == sizing_reason::timing_target_met);
    CHECK(d.memory.tokens_per_ubatch == 334);
    CHECK(d.memory.bytes_per_ubatch == 334);
    CHECK(d.memory.budget_bytes == 800);
    CHECK(ns(d.predicted) == Approx(6'966.6667));
  }
  SECTION("memory wins where it needs more") {
    // 4 bytes a token: 200 tokens per micro-batch, so 5.
    const sizing_decision d = choose_ubatch_count(step_phase::decode, 1000, memory_with(4), timing, {1, 8});
    CHECK(d.num_ubatches == 5);
    CHECK(d.reason == sizing_reason::memory_pressure);
    CHECK(d.memory.bytes_per_ubatch == 800);
    CHECK(ns(d.predicted) == Approx(6'500.0));
  }
  SECTION("best effort and no history are reported as such") {
    const sizing_decision best = choose_ubatch_count(step_phase::decode, 1000, memory_with(1), timing, {1, 2});
    CHECK(best.num_ubatches == 2);
    CHECK(best.reason == sizing_reason::timing_best_effort);
    const sizing_decision fresh = choose_ubatch_count(step_phase::prefill, 500, memory_with(1), timing, {1, 8});
    CHECK(fresh.num_ubatches == 1);
    CHECK(fresh.reason == sizing_reason::no_timing_history);
    CHECK(ns(fresh.predicted) == 0.0);
    const sizing_decision pressed = choose_ubatch_count(step_phase::prefill, 1000, memory_with(1), timing, {1, 8});
    CHECK(pressed.num_ubatches == 2);
    CHECK(pressed.reason == sizing_reason::memory_pressure);
  }
  SECTION("no capacity is an error on both paths") {
    const engine_error e =
        thrown_by([&] { (void)choose_ubatch_count(step_phase::decode, 1000, memory_with(100), timing, {1, 4}); });
    CHECK(e.code() == errc::no_capacity);
    CHECK_THAT(e.what(), Catch::Matchers::Contains("it takes 125 micro-batches"));
    std::error_code ec;
    const sizing_decision d =
        choose_ubatch_count(step_phase::decode, 1000, memory_with(100), timing, {1, 4}, ec);
    CHECK(ec == errc::no_capacity);
    CHECK(d.num_ubatches == 0);
  }
}

TEST_CASE("memory is never said to fit a token count whose ceiling division would overflow",
          "[engine][sizing][memory]") {
  const activation_memory m{1'000'000'000'000, 0.8, 1};  // 8e11 bytes: 8e11 tokens per micro-batch
  const std::int64_t huge = std::numeric_limits<std::int64_t>::max();
  const engine_error e = thrown_by([&] { (void)fit_to_memory(huge, m, {1, 64}); });
  CHECK(e.code() == errc::no_capacity);
  std::error_code ec;
  const memory_fit none = fit_to_memory(huge, m, {1, 64}, ec);
  CHECK(ec == errc::no_capacity);
  CHECK(none.num_ubatches == 0);
  // choose_ubatch_count takes its floor from fit_to_memory.
  step_timing_model timing({0.5, 1000ns, 0.25, 16'500ns});
  CHECK(thrown_by([&] { (void)choose_ubatch_count(step_phase::decode, huge, m, timing, {1, 64}); }).code() ==
        errc::no_capacity);
  // Where it does fit, every micro-batch's bytes stay within the budget.
  const std::int64_t large = huge / 2;
  const memory_fit fit = fit_to_memory(large, m, {1, std::numeric_limits<std::int32_t>::max()});
  CHECK(fit.bytes_per_ubatch <= fit.budget_bytes);
  CHECK(static_cast<std::int64_t>(fit.num_ubatches) * fit.tokens_per_ubatch >= large);
}

TEST_CASE("the timing choice is closed-form: the whole int32 range of counts is decided at once",
          "[engine][sizing][timing]") {
  constexpr std::int32_t int32_max = std::numeric_limits<std::int32_t>::max();
  const std::int64_t tokens = std::int64_t{1} << 40;
  SECTION("zero overhead: more micro-batches always hide more, so the most allowed is the best effort") {
    step_timing_model model({0.5, 0ns, 0.25, 1ns});
    model.record({step_phase::prefill, 100, 10'000ns, 1});
    const timing_choice c = model.choose(step_phase::prefill, tokens, {1, int32_max});
    CHECK(c.num_ubatches == int32_max);
    CHECK(c.reason == timing_reason::best_effort);
  }
  SECTION("a reachable target is met with the fewest micro-batches") {
    step_timing_model model({0.5, 0ns, 0.5, std::chrono::nanoseconds((std::int64_t{1} << 40) * 61)});
    model.record({step_phase::prefill, 100, 10'000ns, 1});  // 100 ns per token
    // t(n) = 2^40 * 100 * (0.5 + 0.5/n) <= 2^40 * 61  <=>  n >= 4.55.
    const timing_choice c = model.choose(step_phase::prefill, tokens, {1, int32_max});
    REQUIRE(c.reason == timing_reason::target_met);
    CHECK(c.num_ubatches == 5);
    CHECK(*model.predict(step_phase::prefill, tokens, c.num_ubatches) <= model.options().target_step_time);
    CHECK(*model.predict(step_phase::prefill, tokens, c.num_ubatches - 1) > model.options().target_step_time);
  }
}

TEST_CASE("the closed-form timing choice agrees with trying every count", "[engine][sizing][timing]") {
  std::mt19937_64 rng(20261129);
  for (int round = 0; round < 2000; ++round) {
    const auto pick = [&](std::int64_t lo, std::int64_t hi) {
      return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
    };
    const timing_options o{0.5, std::chrono::nanoseconds(pick(0, 50'000)),
                           static_cast<double>(pick(0, 50)) / 100.0, std::chrono::nanoseconds(pick(1, 400'000))};
    step_timing_model model(o);
    model.record({step_phase::decode, pick(1, 1000), std::chrono::nanoseconds(pick(0, 1'000'000)),
                  static_cast<std::int32_t>(pick(1, 8))});
    const std::int64_t tokens = pick(1, 5000);
    const auto lo = static_cast<std::int32_t>(pick(1, 16));
    const ubatch_count_limits limits{lo, static_cast<std::int32_t>(pick(lo, 80))};
    const timing_choice got = model.choose(step_phase::decode, tokens, limits);

    // Reference: the fewest counts meeting the target, else the first fastest.
    const std::int32_t hi = static_cast<std::int32_t>(std::min<std::int64_t>(limits.max, tokens));
    const std::int32_t first = std::min(limits.min, hi);
    timing_choice want{first, timing_reason::best_effort, *model.predict(step_phase::decode, tokens, first)};
    bool met = false;
    for (std::int32_t n = first; n <= hi && !met; ++n) {
      const fractional_ns t = *model.predict(step_phase::decode, tokens, n);
      if (t <= o.target_step_time) {
        want = {n, timing_reason::target_met, t};
        met = true;
      } else if (t < want.predicted) {
        want = {n, timing_reason::best_effort, t};
      }
    }
    INFO("round " << round << " tokens " << tokens << " limits " << limits.min << ".." << limits.max);
    REQUIRE(got.reason == want.reason);
    // Equal predictions may differ in the last bit between the two searches:
    // the count must be the reference's, or predict the same time.
    if (got.num_ubatches != want.num_ubatches) {
      REQUIRE(ns(got.predicted) == Approx(ns(want.predicted)).epsilon(1e-12));
    }
  }
}
