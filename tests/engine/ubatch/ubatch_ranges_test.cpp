#include "cobatch/engine/ubatch/ubatch_slicing.hpp"

#include "cobatch/engine/ubatch/ubatch_outputs.hpp"
#include "engine_test_support.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

using namespace cobatch::engine;
using cobatch::engine::test::owned_batch;
using cobatch::engine::test::thrown_by;

TEST_CASE("a plan from explicit ranges equals the planned one for the same cuts", "[engine][ubatch][ranges]") {
  const auto batch = owned_batch::with_context({5, 300, 7, 200, 1, 512}, 16);
  const auto planned = slice_batch(batch.view(), {3, 1032}, {.thresholds = {.prefill_tokens = 1}});
  REQUIRE(planned.size() == 3);
  std::vector<ubatch_range> ranges;
  for (std::int32_t k = 0; k < 3; ++k)
    ranges.push_back({planned[k].token_begin, planned[k].token_end, planned[k].req_begin, planned[k].req_end});
  const auto given = plan_from_ranges(batch.view(), ranges, 1032);
  REQUIRE(given.size() == 3);
  CHECK(given.split());
  CHECK(given.mode() == split_mode::token_balanced);  // the cuts split requests
  CHECK(given.padded_tokens() == 1032);
  for (std::int32_t k = 0; k < 3; ++k) {
    CHECK(given[k].padded_tokens == planned[k].padded_tokens);
    CHECK(std::vector<std::int32_t>(given[k].query_start_loc.begin(), given[k].query_start_loc.end()) ==
          std::vector<std::int32_t>(planned[k].query_start_loc.begin(), planned[k].query_start_loc.end()));
    CHECK(std::vector<std::int32_t>(given[k].seq_lens.begin(), given[k].seq_lens.end()) ==
          std::vector<std::int32_t>(planned[k].seq_lens.begin(), planned[k].seq_lens.end()));
  }
}

TEST_CASE("explicit ranges between requests make a request-aligned plan", "[engine][ubatch][ranges]") {
  const auto batch = owned_batch::with_context({4, 4, 8}, 2);
  const std::vector<ubatch_range> ranges{{0, 8, 0, 2}, {8, 16, 2, 3}};
  const auto plan = plan_from_ranges(batch.view(), ranges, 16);
  CHECK(plan.mode() == split_mode::request_aligned);
  CHECK(plan[1].num_reqs() == 1);
  const std::vector<ubatch_range> one{{0, 16, 0, 3}};
  const auto single = plan_from_ranges(batch.view(), one, 20);
  CHECK(single.outcome() == split_outcome::single_requested);
  CHECK(single[0].padding() == 4);
}

TEST_CASE("bad explicit ranges are rejected, naming the range", "[engine][ubatch][ranges]") {
  const auto batch = owned_batch::with_context({4, 4, 8}, 2);
  auto error = [&](std::vector<ubatch_range> ranges, std::int32_t padded = 16) {
    return thrown_by([&] { plan_from_ranges(batch.view(), ranges, padded); });
  };
  CHECK(error({}).code() == errc::empty_batch);
  auto e = error({{1, 16, 0, 3}});
  CHECK(e.code() == errc::invalid_argument);
  CHECK(std::string(e.what()).rfind("plan_from_ranges: range 0 begins at token 1", 0) == 0);
  e = error({{0, 8, 0, 2}, {9, 16, 2, 3}});
  CHECK(std::string(e.what()).find("range 1 begins at token 9; it must begin at 8") != std::string::npos);
  e = error({{0, 8, 0, 2}, {8, 8, 2, 2}, {8, 16, 2, 3}});
  CHECK(std::string(e.what()).find("has no real tokens") != std::string::npos);
  e = error({{0, 8, 0, 2}, {8, 17, 2, 3}});
  CHECK(std::string(e.what()).find("past the batch's 16 tokens") != std::string::npos);
  e = error({{0, 8, 0, 2}, {8, 12, 2, 3}});
  CHECK(std::string(e.what()).find("the ranges end at token 12") != std::string::npos);
  e = error({{0, 6, 0, 2}, {6, 16, 2, 3}});
  CHECK(e.code() == errc::length_mismatch);
  CHECK(std::string(e.what()).find("range 1 gives requests [2, 3) but tokens [6, 16) hold requests [1, 3)") !=
        std::string::npos);
  CHECK(error({{0, 16, 0, 3}}, 15).code() == errc::invalid_argument);

  ubatch_plan plan;
  std::error_code ec;
  const std::vector<ubatch_range> bad{{0, 6, 0, 1}, {6, 16, 1, 3}};
  plan_from_ranges(batch.view(), bad, 16, plan, ec);
  CHECK(ec == errc::length_mismatch);
  CHECK(plan.empty());
  const std::vector<ubatch_range> good{{0, 6, 0, 2}, {6, 16, 1, 3}};
  plan_from_ranges(batch.view(), good, 16, plan, ec);
  CHECK_FALSE(ec);
  CHECK(plan.size() == 2);
}

TEST_CASE("micro-batches come with their input rows in one iteration", "[engine][ubatch][ranges]") {
  const auto batch = owned_batch::with_context({4, 4, 8}, 2);
  const std::vector<ubatch_range> ranges{{0, 8, 0, 2}, {8, 16, 2, 3}};
  const auto plan = plan_from_ranges(batch.view(), ranges, 18);
  std::vector<float> hidden(18 * 3);
  for (std::size_t i = 0; i < hidden.size(); ++i) hidden[i] = static_cast<float>(i);
  token_rows<float> all(hidden.data(), 18, 3);
  std::vector<std::int64_t> firsts, counts;
  for (auto&& [k, mb, rows] : each_ubatch_with_rows(plan, all)) {
    CHECK(mb.token_begin == plan[k].token_begin);
    firsts.push_back(static_cast<std::int64_t>(rows.row(0)[0]));
    counts.push_back(rows.num_rows());
  }
  CHECK(firsts == std::vector<std::int64_t>{0, 24});
  CHECK(counts == std::vector<std::int64_t>{8, 8});
  counts.clear();
  for (auto&& item : each_ubatch_with_rows(plan, all, token_extent::padded)) counts.push_back(item.rows.num_rows());
  CHECK(counts == std::vector<std::int64_t>{8, 10});
  // Too few rows: rejected before the first micro-batch.
  token_rows<float> short_rows(hidden.data(), 15, 3);
  CHECK(thrown_by([&] { (void)each_ubatch_with_rows(plan, short_rows); }).code() == errc::invalid_argument);
}
