#include <cobatch/engine/step/batch_size_tuner.hpp>

#include "engine_test_support.hpp"
#include "tuner_cost_model.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <random>

using namespace cobatch::engine;
using namespace cobatch::engine::test;

namespace {
using cost_model = tuner_cost_model;
}  // namespace

TEST_CASE("batch_size_tuner: settles within 10% of the best budget on seeded cost models and follows a change",
          "[engine][step][tuner]") {
  for (std::uint64_t seed = 1; seed <= 12; ++seed) {
    INFO("seed " << seed);
    std::mt19937_64 rng(seed);
    const double target = 50e6;
    const cost_model a = cost_model::random(rng);
    const cost_model b = a.changed();
    batch_size_tuner tuner({.min_budget = 16, .max_budget = 8192, .target_step_time = std::chrono::milliseconds(50)});
    CHECK(tuner_score(tuner, a, rng, 400, target) >= 0.9);
    CHECK(tuner_score(tuner, b, rng, 400, target) >= 0.9);  // the cost changed
    CHECK(tuner_score(tuner, a, rng, 400, target) >= 0.9);  // and back
  }
}

TEST_CASE("batch_size_tuner: keeps steps within the target time", "[engine][step][tuner]") {
  // Throughput keeps growing with the budget, but steps above 1000 tokens
  // break a 10 ms target.
  const cost_model cost{1e6, 9e3, 1e9, 0};
  batch_size_tuner tuner({.min_budget = 16, .max_budget = 8192, .target_step_time = std::chrono::milliseconds(10)});
  std::mt19937_64 rng(3);
  tuner_score(tuner, cost, rng, 400, 10e6);
  CHECK(cost(tuner.best(step_phase::prefill)) <= 10e6 * 1.03);  // within the 3% measurement noise
  CHECK(tuner.best(step_phase::prefill) >= 900);
}

TEST_CASE("batch_size_tuner: a step that did not fill its budget teaches its own size; bad input is refused",
          "[engine][step][tuner]") {
  batch_size_tuner tuner({.min_budget = 16, .max_budget = 1024});
  CHECK(tuner.budget(step_phase::decode) == 16);
  tuner.record(step_phase::decode, 1024, 3, std::chrono::microseconds(100));  // demand-limited: no probe judged
  CHECK_THAT(thrown_by([&] { tuner.record(step_phase::decode, 16, 0, std::chrono::microseconds(1)); }).what(),
             Catch::Contains("tokens 0"));
  CHECK_THAT(thrown_by([&] { tuner.record(step_phase::decode, 16, 4, std::chrono::nanoseconds(-1)); }).what(),
             Catch::Contains("negative"));
  CHECK_THAT(thrown_by([] { batch_size_tuner({.min_budget = 0}); }).what(), Catch::Contains("min_budget 0"));
  CHECK_THAT(thrown_by([] { batch_size_tuner({.grid_ratio = 1.0}); }).what(), Catch::Contains("grid_ratio"));
  CHECK_THAT(thrown_by([] { batch_size_tuner({.target_step_time = std::chrono::nanoseconds(0)}); }).what(),
             Catch::Contains("target_step_time"));
}
