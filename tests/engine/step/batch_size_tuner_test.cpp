#include <cobatch/engine/step/batch_size_tuner.hpp>

#include "engine_test_support.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <random>

using namespace cobatch::engine;
using namespace cobatch::engine::test;

namespace {
// Step time (ns) of a budget: fixed cost, per-token cost, and a quadratic
// penalty past a knee where the kernels stop scaling.
struct cost_model {
  double fixed, per_token, knee, penalty;
  double operator()(double b) const {
    const double over = std::max(0.0, b - knee);
    return fixed + per_token * b + penalty * over * over;
  }
};

double run_and_score(batch_size_tuner& tuner, const cost_model& cost, std::mt19937_64& rng, int steps, double target) {
  std::normal_distribution<double> noise(1.0, 0.03);
  for (int i = 0; i < steps; ++i) {
    const std::int32_t b = tuner.budget(step_phase::prefill);
    tuner.record(step_phase::prefill, b, b, std::chrono::nanoseconds(static_cast<std::int64_t>(cost(b) * noise(rng))));
  }
  double best = 0;
  for (std::int32_t b : tuner.grid())
    if (cost(b) <= target) best = std::max(best, b / cost(b));
  const double chosen = tuner.best(step_phase::prefill);
  return cost(chosen) <= target ? (chosen / cost(chosen)) / best : 0.0;
}
}  // namespace

TEST_CASE("batch_size_tuner: settles within 10% of the best budget on seeded cost models and follows a change",
          "[engine][step][tuner]") {
  for (std::uint64_t seed = 1; seed <= 12; ++seed) {
    INFO("seed " << seed);
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    const double target = 50e6;
    const cost_model a{2e6 + 4e6 * u(rng), 2e3 + 8e3 * u(rng), 500 + 3000 * u(rng), 20 + 200 * u(rng)};
    const cost_model b{a.fixed * 1.5, a.per_token * 2.0, a.knee * 0.5, a.penalty * 2};
    batch_size_tuner tuner({.min_budget = 16, .max_budget = 8192, .target_step_time = std::chrono::milliseconds(50)});
    CHECK(run_and_score(tuner, a, rng, 400, target) >= 0.9);
    CHECK(run_and_score(tuner, b, rng, 400, target) >= 0.9);  // the cost changed
    CHECK(run_and_score(tuner, a, rng, 400, target) >= 0.9);  // and back
  }
}

TEST_CASE("batch_size_tuner: keeps steps within the target time", "[engine][step][tuner]") {
  // Throughput keeps growing with the budget, but steps above 1000 tokens
  // break a 10 ms target.
  const cost_model cost{1e6, 9e3, 1e9, 0};
  batch_size_tuner tuner({.min_budget = 16, .max_budget = 8192, .target_step_time = std::chrono::milliseconds(10)});
  std::mt19937_64 rng(3);
  run_and_score(tuner, cost, rng, 400, 10e6);
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
