#include <cobatch/engine/step/step_planner.hpp>

#include "engine_test_support.hpp"

#include <cobatch/engine/dispatch/capture_ladder.hpp>

#include <catch2/catch.hpp>

using namespace cobatch::engine;
using namespace cobatch::engine::test;

namespace {
step_planner make_planner(std::int32_t pages, std::int32_t max_running = 8) {
  planner_options o;
  o.max_running = max_running;
  o.num_pages = pages;
  o.page_size = 4;
  o.limits = {64, 32};
  o.ubatches = {1, 2};
  o.slicing.thresholds = {.decode_tokens = 2, .prefill_tokens = 4};
  dispatch_router router(capture_ladder::standard(32));
  for (std::uint32_t rung : router.ladder().sizes()) router.declare(dispatch_mode::full, dispatch_key::for_tokens(rung));
  return step_planner(o, std::move(router));
}
}  // namespace

TEST_CASE("step_planner: chunked prefill within the budget, decodes first, arrival order", "[engine][step][planner]") {
  step_planner p = make_planner(64);
  step_updates out;
  REQUIRE(p.add(1, {.prompt = std::vector<std::int32_t>(10, 1), .max_tokens = 4}, out));
  REQUIRE(p.add(2, {.prompt = {1, 2}, .max_tokens = 4}, out));
  step_plan plan;
  p.plan(6, plan, out);
  REQUIRE(plan.num_reqs() == 1);  // request 1's first chunk fills the budget; 2 may not overtake it
  CHECK(plan.requests[0].num_tokens == 6);
  CHECK(plan.requests[0].sample_index == -1);  // mid-prompt: nothing sampled
  CHECK(plan.admitted == std::vector<request_id>{1});
  p.plan(6, plan, out);  // (no commit needed: nothing was sampled)
  REQUIRE(plan.num_reqs() == 2);
  CHECK(plan.requests[0].num_tokens == 4);  // the rest of request 1, which samples
  CHECK(plan.requests[0].sample_index == 0);
  CHECK(plan.requests[1].num_tokens == 2);
  CHECK(plan.admitted == std::vector<request_id>{2});
  CHECK(plan.query_start_loc == std::vector<std::int32_t>{0, 4, 6});
  CHECK(plan.seq_lens == std::vector<std::int32_t>{10, 2});
  REQUIRE(plan.block_begin.size() == 2);
  CHECK(plan.block_end[0] - plan.block_begin[0] == 3);
  CHECK(plan.block_end[1] - plan.block_begin[1] == 1);
  // The next step, planned before this one's tokens are known, refers to them.
  step_plan next;
  p.plan(6, next, out);
  REQUIRE(next.num_reqs() == 2);
  CHECK(next.token_ids == std::vector<std::int32_t>{token_ref(0), token_ref(1)});
  CHECK(next.positions == std::vector<std::int32_t>{10, 2});
  p.commit(plan, std::vector<std::int32_t>{7, 8}, out);
  REQUIRE(out.updates.size() == 2);
  CHECK(out.tokens == std::vector<std::int32_t>{7, 8});
}

TEST_CASE("step_planner: a request that needs a page when none is free preempts the youngest", "[engine][step][planner]") {
  step_planner p = make_planner(3);
  step_updates out;
  REQUIRE(p.add(1, {.prompt = std::vector<std::int32_t>(4, 1), .max_tokens = 4}, out));
  REQUIRE(p.add(2, {.prompt = std::vector<std::int32_t>(8, 1), .max_tokens = 4}, out));
  step_plan plan;
  p.plan(32, plan, out);  // 1 page + 2 pages: the pool is full
  REQUIRE(plan.num_reqs() == 2);
  p.commit(plan, std::vector<std::int32_t>{5, 6}, out);
  p.plan(32, plan, out);  // request 1 crosses into a second page: request 2 goes
  CHECK(plan.preempted == std::vector<request_id>{2});
  REQUIRE(plan.num_reqs() == 1);
  CHECK(plan.requests[0].id == 1);
  CHECK(p.gauges().preemptions == 1);
  CHECK(p.gauges().pages_in_use <= 3);
}

TEST_CASE("step_planner: bad requests are refused with reasons; bad budgets and options are errors",
          "[engine][step][planner]") {
  step_planner p = make_planner(4);
  step_updates out;
  CHECK_FALSE(p.add(1, {.prompt = {}, .max_tokens = 1}, out));
  CHECK_FALSE(p.add(2, {.prompt = std::vector<std::int32_t>(60, 1), .max_tokens = 10}, out));
  CHECK_FALSE(p.add(3, {.prompt = {40}, .max_tokens = 1}, out));
  CHECK_FALSE(p.add(4, {.prompt = {1}, .max_tokens = 0}, out));
  CHECK_FALSE(p.add(5, {.prompt = std::vector<std::int32_t>(20, 1), .max_tokens = 1}, out));  // 6 pages > 4
  REQUIRE(out.updates.size() == 5);
  for (const auto& u : out.updates) CHECK(u.finish == finish_reason::refused);
  CHECK(out.updates[0].error == make_error_code(errc::empty_batch));
  CHECK(out.updates[1].error == make_error_code(errc::overflow));
  CHECK_THAT(out.updates[2].detail, Catch::Contains("vocabulary"));
  CHECK_THAT(out.updates[3].detail, Catch::Contains("max_tokens 0"));
  CHECK(out.updates[4].error == make_error_code(errc::no_capacity));
  step_plan plan;
  CHECK_THAT(thrown_by([&] { p.plan(0, plan, out); }).what(), Catch::Contains("token budget 0"));
  CHECK_THAT(thrown_by([&] { p.plan(-3, plan, out); }).what(), Catch::Contains("token budget -3"));
  planner_options bad;
  bad.max_running = 0;
  CHECK_THAT(thrown_by([&] { step_planner(bad, dispatch_router(capture_ladder::standard(8))); }).what(),
             Catch::Contains("max_running 0"));
}
