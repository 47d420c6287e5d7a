// The whole engine path on CUDA: engine_loop (planner, step runner with its
// persistent buffers in device memory, one host->device copy of the staged
// inputs per step, token references resolved on the device, sampled tokens
// and logits copied back) driving the reference model's CUDA kernels, against
// the same loop driving the host model. Greedy: each request's tokens must
// agree with the host's up to its first near-tie (where the two backends'
// rounding may pick different tokens and the contexts part), and every
// sampled row's logits agree within 1e-3 of the row's scale (the tolerance of
// model_device_test.cpp, for the same reasons).
#include "engine_rig.hpp"
#include "llama_model.hpp"
#include "llama_weights.hpp"
#include "logit_gap.hpp"

#include <cobatch/gpu/cuda/cuda_device.hpp>
#include <cobatch/gpu/host/host_device.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

using namespace cobatch;
using namespace cobatch::engine;
using namespace cobatch::model;
using cobatch::test::top2_gap;

namespace {

struct loop_run {
  std::vector<engine::test::outcome> outcomes;
  std::map<request_id, std::map<std::int32_t, std::vector<float>>> logits;  // [request][output index]
  runner_stats stats;
  std::uint64_t decode_steps = 0;
};

loop_run run_on(coro::run_loop& loop, gpu::device& device, const llama_weights& w,
                const std::vector<generation_request>& requests) {
  llama_model m(device, w, llama_rank_options{256, 16, 0, nullptr});
  engine_rank rank{&device, &m};
  engine_options o;
  o.planner.max_running = 16;
  o.planner.num_pages = 256;
  o.planner.page_size = 16;
  o.planner.ubatches = {2, 2};
  o.planner.slicing.thresholds = {.decode_tokens = 2, .prefill_tokens = 16};
  o.fixed_budget = 64;
  o.graph_max_tokens = 64;
  o.keep_logits = true;
  o.overlap = step_overlap::overlapped;
  engine_loop engine(loop.get_executor(), {&rank, 1}, o);
  loop_run out;
  const auto vocab = static_cast<std::size_t>(w.config.vocab_size);
  engine.on_step([&](const step_report& r) {
    if (r.plan->phase == step_phase::decode) ++out.decode_steps;
    for (std::size_t i = 0; i < r.plan->requests.size(); ++i) {
      const auto& q = r.plan->requests[i];
      if (q.sample_index < 0) continue;
      out.logits[q.id][q.sample_index].assign(r.outputs.logits.begin() + static_cast<std::ptrdiff_t>(i * vocab),
                                              r.outputs.logits.begin() + static_cast<std::ptrdiff_t>((i + 1) * vocab));
    }
  });
  out.outcomes = engine::test::run_all(loop, engine, requests);
  out.stats = engine.runner(0).stats();
  return out;
}

}  // namespace

TEST_CASE("engine_loop on CUDA: the reference model's CUDA kernels give the host model's greedy tokens and logits",
          "[cuda][model][engine_loop]") {
  coro::run_loop loop;
  coro::completion_reactor reactor(loop.get_executor());
  loop.attach(reactor);
  gpu::host::host_device host(reactor);
  gpu::cuda::cuda_device cuda(reactor, 0);
  const llama_weights w = llama_weights::seeded(llama_config::tiny(), 42);
  std::mt19937 rng(17);
  std::vector<generation_request> requests(16);
  for (auto& r : requests) {
    r.prompt.resize(1 + rng() % 40);
    for (auto& t : r.prompt) t = static_cast<std::int32_t>(rng() % 256);
    r.max_tokens = 8;
  }
  const loop_run want = run_on(loop, host, w, requests);
  const loop_run have = run_on(loop, cuda, w, requests);

  // The CUDA run took the paths the loop takes on a GPU: graphs captured and
  // replayed, decode steps whose input tokens were references.
  CHECK(have.stats.graph_captures > 0);
  CHECK(have.stats.graph_replays > 0);
  CHECK(have.decode_steps > 0);
  CHECK(have.stats.failures == 0);

  std::size_t compared = 0;
  double worst = 0.0;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const request_id id = i + 1;
    INFO("request " << i);
    REQUIRE(have.outcomes[i].finish == want.outcomes[i].finish);
    const auto& lw = want.logits.at(id);
    const auto& lh = have.logits.at(id);
    for (const auto& [index, row] : lw) {
      REQUIRE(lh.count(index) == 1);
      const std::vector<float>& other = lh.at(index);
      REQUIRE(other.size() == row.size());
      float scale = 1.0f;
      for (float x : row) scale = std::max(scale, std::fabs(x));
      double diff = 0.0;
      for (std::size_t v = 0; v < row.size(); ++v) diff = std::max(diff, static_cast<double>(std::fabs(row[v] - other[v])));
      worst = std::max(worst, diff / scale);
      INFO("output " << index << " largest difference " << diff << " scale " << scale);
      CHECK(diff <= 1e-3 * scale);
      const auto t = static_cast<std::size_t>(index);
      REQUIRE(t < want.outcomes[i].tokens.size());
      REQUIRE(t < have.outcomes[i].tokens.size());
      if (top2_gap(row) <= 2e-3f * scale) break;  // a near-tie: the contexts may part from here on
      CHECK(have.outcomes[i].tokens[t] == want.outcomes[i].tokens[t]);
      ++compared;
    }
  }
  INFO("largest relative difference " << worst << ", " << compared << " tokens compared");
  CHECK(compared >= 64);
}
