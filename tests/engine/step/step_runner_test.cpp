#include <cobatch/engine/step/step_runner.hpp>

#include "engine_rig.hpp"
#include "engine_test_support.hpp"

#include <cobatch/engine/dispatch/capture_ladder.hpp>
#include <cobatch/engine/step/step_planner.hpp>

#include <catch2/catch.hpp>

#include <mutex>

using namespace cobatch;
using namespace cobatch::engine;
using namespace cobatch::engine::test;

namespace {

// One eager stage that, when it runs on the stream, records the inputs the
// micro-batch's buffers hold and samples 40 + (its request's step slot).
class recording_model final : public step_model {
 public:
  model_info info() const override { return {64, 1024, 1, 0}; }
  std::span<const stage_kind> stages() const override { return kinds_; }
  void bind(const ubatch_io&) override {}
  void plan(const step_plan&, std::int32_t, const ubatch&, const ubatch_io&, gpu::stream_ref) override {}
  void enqueue_stage(std::int32_t, const ubatch_io& io, std::int32_t run_tokens, gpu::stream_ref s) override {
    const ubatch_io* p = &io;
    s.enqueue([this, p, run_tokens] {
      std::lock_guard lock(mutex_);
      tokens.assign(p->token_ids, p->token_ids + run_tokens);
      positions.assign(p->positions, p->positions + run_tokens);
      counts = {p->counts[0], p->counts[1]};
      for (std::int32_t r = 0; r < p->counts[1]; ++r)
        if (p->sample_rows[r] >= 0) p->sampled[p->req_slots[r]] = 40 + p->req_slots[r];
    });
  }
  std::vector<std::int32_t> tokens, positions, counts;

 private:
  std::mutex mutex_;
  std::vector<stage_kind> kinds_{stage_kind::eager};
};

}  // namespace

TEST_CASE("step_runner: inputs reach the device buffers, references resolve on the device, bad references are refused",
          "[engine][step][runner]") {
  host_rig rig;
  recording_model model;
  runner_options ro;
  ro.max_tokens = 16;
  ro.max_reqs = 4;
  ro.max_pages = 16;
  ro.max_ubatches = 1;
  step_runner runner(rig.loop.get_executor(), rig.device, model, ro);
  planner_options po;
  po.max_running = 4;
  po.num_pages = 16;
  po.page_size = 4;
  po.ubatches = {1, 1};
  po.limits = {64, 32};
  step_planner planner(po, dispatch_router(capture_ladder::standard(16)));
  step_updates updates;
  REQUIRE(planner.add(1, {.prompt = {5, 6, 7}, .max_tokens = 4}, updates));
  REQUIRE(planner.add(2, {.prompt = {9}, .max_tokens = 4}, updates));

  step_plan first, second;
  planner.plan(16, first, updates);
  planner.plan(16, second, updates);  // before the first's tokens are known
  REQUIRE(second.token_ids == std::vector<std::int32_t>{token_ref(0), token_ref(1)});
  const step_ticket t1 = coro::sync_wait(rig.loop, runner.launch(first));
  const step_ticket t2 = coro::sync_wait(rig.loop, runner.launch(second));
  const step_outputs o1 = coro::sync_wait(rig.loop, runner.collect(t1));
  CHECK(std::vector<std::int32_t>(o1.sampled.begin(), o1.sampled.end()) == std::vector<std::int32_t>{40, 41});
  const step_outputs o2 = coro::sync_wait(rig.loop, runner.collect(t2));
  CHECK(std::vector<std::int32_t>(o2.sampled.begin(), o2.sampled.end()) == std::vector<std::int32_t>{40, 41});
  // The second step read the first's sampled tokens, resolved on the device.
  CHECK(model.tokens == std::vector<std::int32_t>{40, 41});
  CHECK(model.positions == std::vector<std::int32_t>{3, 1});
  CHECK(model.counts == std::vector<std::int32_t>{2, 2});

  step_plan bad = second;
  bad.step = 99;
  bad.token_ids[1] = token_ref(ro.max_reqs);
  CHECK_THAT(thrown_by([&] { (void)coro::sync_wait(rig.loop, runner.launch(bad)); }).what(),
             Catch::Contains("refers to output slot 4"));
  CHECK(runner.stats().steps == 2);
}
