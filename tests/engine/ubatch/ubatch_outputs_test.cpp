#include "cobatch/engine/ubatch/ubatch_outputs.hpp"

#include "engine_test_support.hpp"

#include <catch2/catch.hpp>

#include <numeric>
#include <string>
#include <vector>

using namespace cobatch;
using engine::test::owned_batch;
using engine::test::thrown_by;

namespace {
engine::ubatch_plan three_way_plan(const owned_batch& b, std::int32_t padded) {
  return engine::slice_batch(b.view(), {3, padded}, {.thresholds = {.prefill_tokens = 1}});
}
}  // namespace

TEST_CASE("each_ubatch walks a plan in order", "[engine][ubatch_outputs]") {
  const auto batch = owned_batch::with_context({5, 300, 7, 200, 1, 512}, 16);
  const auto plan = three_way_plan(batch, 1032);
  std::int32_t k = 0;
  std::int32_t next_token = 0;
  for (const engine::ubatch& mb : engine::each_ubatch(plan)) {
    CHECK(mb.token_begin == plan[k].token_begin);
    CHECK(mb.token_begin == next_token);  // consecutive, no gaps
    next_token = mb.token_end;
    ++k;
  }
  CHECK(k == 3);
  CHECK(next_token == batch.num_tokens());
}

TEST_CASE("outputs recorded out of order gather in micro-batch order", "[engine][ubatch_outputs]") {
  engine::ubatch_outputs<std::string> outputs(3);
  outputs.record(2, "c");
  CHECK_FALSE(outputs.complete());
  outputs.record(0, "a");
  outputs.record(1, "b");
  CHECK(outputs.complete());
  CHECK(outputs.recorded(1));
  CHECK(std::move(outputs).gather() == std::vector<std::string>{"a", "b", "c"});
}

TEST_CASE("ubatch_outputs rejects what would lose or duplicate an output", "[engine][ubatch_outputs]") {
  CHECK(thrown_by([] { engine::ubatch_outputs<int> o(0); }).code() == engine::errc::invalid_argument);
  engine::ubatch_outputs<int> outputs(4);
  outputs.record(1, 10);
  CHECK(thrown_by([&] { outputs.record(1, 11); }).code() == engine::errc::invalid_argument);
  CHECK(thrown_by([&] { outputs.record(4, 0); }).code() == engine::errc::invalid_argument);
  CHECK(thrown_by([&] { outputs.record(-1, 0); }).code() == engine::errc::invalid_argument);
  const auto missing = thrown_by([&] { (void)std::move(outputs).gather(); });
  CHECK(std::string(missing.what()).find("0, 2, 3 of 4") != std::string::npos);
}

TEST_CASE("for_each_ubatch runs and gathers in one call", "[engine][ubatch_outputs]") {
  const auto batch = owned_batch::with_context({5, 300, 7, 200, 1, 512}, 16);
  const auto plan = three_way_plan(batch, 1032);
  const auto sizes = engine::for_each_ubatch(plan, [](const engine::ubatch& mb, std::int32_t k) {
    return std::pair{k, mb.real_tokens()};
  });
  REQUIRE(sizes.size() == 3);
  std::int32_t total = 0;
  for (std::int32_t k = 0; k < 3; ++k) {
    CHECK(sizes[k].first == k);
    total += sizes[k].second;
  }
  CHECK(total == batch.num_tokens());
}

TEST_CASE("concat_token_rows rebuilds the batch's rows and drops padding", "[engine][ubatch_outputs]") {
  const auto batch = owned_batch::with_context({5, 300, 7, 200, 1, 512}, 16);
  const auto plan = three_way_plan(batch, 1032);  // 7 padding slots, in the last micro-batch
  constexpr std::int64_t width = 3;
  // Each micro-batch "computes" row t = {t, t, t} for its padded slots, and
  // -1 for padding.
  std::vector<std::vector<int>> per_ubatch;
  for (std::int32_t k = 0; k < plan.size(); ++k) {
    std::vector<int> rows;
    for (std::int32_t slot = 0; slot < plan[k].padded_tokens; ++slot) {
      const int t = slot < plan[k].real_tokens() ? plan[k].token_begin + slot : -1;
      rows.insert(rows.end(), width, t);
    }
    per_ubatch.push_back(std::move(rows));
  }
  const auto all = engine::concat_token_rows(plan, per_ubatch, width);
  REQUIRE(all.size() == static_cast<std::size_t>(batch.num_tokens() * width));
  for (std::int32_t t = 0; t < batch.num_tokens(); ++t) {
    for (std::int64_t c = 0; c < width; ++c) REQUIRE(all[t * width + c] == t);
  }

  per_ubatch[1].resize(3);
  const auto short_error = thrown_by([&] { (void)engine::concat_token_rows(plan, per_ubatch, width); });
  CHECK(short_error.code() == engine::errc::length_mismatch);
  CHECK(std::string(short_error.what()).find("micro-batch 1") != std::string::npos);
  per_ubatch.pop_back();
  CHECK(thrown_by([&] { (void)engine::concat_token_rows(plan, per_ubatch, width); }).code() ==
        engine::errc::invalid_argument);
  CHECK(thrown_by([&] { (void)engine::concat_token_rows(plan, per_ubatch, 0); }).code() ==
        engine::errc::invalid_argument);
}
