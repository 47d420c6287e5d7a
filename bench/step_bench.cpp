// The engine step's figures:
//   step_plan_ns          planning one step of 256 running decodes and 16 new prompts
//   step_host_overhead_us host CPU of the loop thread per decode step (256 requests,
//                         4 layers, 2 micro-batches), kernels excluded (they are empty)
//   step_gap_us           median device idle time between consecutive decode steps,
//                         overlapped loop, and the sequential loop's in the same run
//   tuner_regret          throughput at the tuner's budget over the best budget's, on
//                         seeded synthetic cost models (the worst of them)
#include <cobatch/coro/completion_reactor.hpp>
#include <cobatch/coro/run_loop.hpp>
#include <cobatch/coro/sync_wait.hpp>
#include <cobatch/coro/use_task.hpp>
#include <cobatch/coro/when_all.hpp>
#include <cobatch/engine/dispatch/capture_ladder.hpp>
#include <cobatch/engine/step/batch_size_tuner.hpp>
#include <cobatch/engine/step/engine_loop.hpp>
#include <cobatch/engine/step/step_planner.hpp>
#include <cobatch/gpu/host/host_device.hpp>

#include <benchmark/benchmark.h>

#include "tuner_cost_model.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <random>
#include <vector>

using namespace cobatch;
using namespace cobatch::engine;

namespace {

// A model of L layers whose kernels do nothing but, optionally, hold the
// stream for a fixed time (as a kernel holds a GPU), so that the figures are
// the engine's own. Stages per layer: graph, eager (attention), collective,
// eager (merge); a last graph stage samples token (position % vocab).
class null_model final : public step_model {
 public:
  null_model(std::int32_t layers, std::chrono::microseconds kernel) : kernel_(kernel) {
    kinds_.push_back(stage_kind::graph);
    for (std::int32_t l = 0; l < layers; ++l) {
      for (stage_kind k : {stage_kind::eager, stage_kind::collective, stage_kind::eager, stage_kind::graph})
        kinds_.push_back(k);
    }
  }
  model_info info() const override { return {256, 1 << 20, 4, 0}; }
  std::span<const stage_kind> stages() const override { return kinds_; }
  void bind(const ubatch_io&) override {}
  void plan(const step_plan&, std::int32_t, const ubatch&, const ubatch_io&, gpu::stream_ref) override {}
  void enqueue_stage(std::int32_t stage, const ubatch_io& io, std::int32_t, gpu::stream_ref s) override {
    if (stage + 1 != static_cast<std::int32_t>(kinds_.size())) {
      s.enqueue([] {});
      return;
    }
    const ubatch_io* p = &io;
    const auto spin = kernel_;
    s.enqueue([p, spin] {
      const auto until = std::chrono::steady_clock::now() + spin;
      while (std::chrono::steady_clock::now() < until) {
      }
      for (std::int32_t r = 0; r < p->counts[1]; ++r)
        if (p->sample_rows[r] >= 0) p->sampled[p->req_slots[r]] = p->positions[p->sample_rows[r]] % 256;
    });
  }

 private:
  std::chrono::microseconds kernel_;
  std::vector<stage_kind> kinds_;
};

double thread_cpu_us() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

struct loop_figures {
  double host_us_per_step = 0;       // the loop's CPU on the steps' own work
  double thread_us_per_step = 0;     // all of the loop thread's CPU, waiting included
  double median_gap_us = 0;
  std::size_t steps = 0;
};

// Runs `requests` decode requests through an engine_loop with `model` and
// measures the loop thread's CPU and the device gaps between decode steps.
loop_figures run_loop(null_model& model, std::int32_t requests, std::int32_t max_tokens, step_overlap overlap) {
  coro::run_loop loop;
  coro::completion_reactor reactor(loop.get_executor());
  loop.attach(reactor);
  gpu::host::host_device device(reactor);
  engine_rank rank{&device, &model};
  engine_options o;
  o.planner.max_running = requests;
  o.planner.num_pages = requests * 8;
  o.planner.page_size = 16;
  o.planner.ubatches = {2, 2};
  o.fixed_budget = requests;
  o.graph_max_tokens = 512;
  o.overlap = overlap;
  engine_loop engine(loop.get_executor(), {&rank, 1}, o);
  std::vector<double> gaps;
  std::size_t steps = 0;
  double host_cpu_us = 0.0;
  std::size_t decode_steps = 0;
  engine.on_step([&](const step_report& r) {
    ++steps;
    if (r.plan->phase == step_phase::decode) {
      host_cpu_us += std::chrono::duration<double, std::micro>(r.host_cpu).count();
      ++decode_steps;
    }
    if (r.plan->phase == step_phase::decode && r.plan->step > 2)
      gaps.push_back(std::chrono::duration<double, std::micro>(r.device_gap).count());
  });
  std::vector<request_stream> streams;
  for (std::int32_t i = 0; i < requests; ++i) streams.push_back(engine.submit({.prompt = {1}, .max_tokens = max_tokens}));
  auto consume = [&]() -> coro::task<void> {
    for (auto& s : streams) {
      while (true) {
        auto [ec, chunk] = co_await s.async_next(coro::as_tuple_task);
        if (ec || chunk.last()) break;
      }
    }
    engine.stop();
  };
  const double cpu0 = thread_cpu_us();
  coro::sync_wait(loop, coro::when_all(engine.run(), consume()));
  const double cpu = thread_cpu_us() - cpu0;
  loop_figures f;
  f.steps = steps;
  f.thread_us_per_step = cpu / static_cast<double>(std::max<std::size_t>(steps, 1));
  f.host_us_per_step = host_cpu_us / static_cast<double>(std::max<std::size_t>(decode_steps, 1));
  if (!gaps.empty()) {
    std::nth_element(gaps.begin(), gaps.begin() + static_cast<std::ptrdiff_t>(gaps.size() / 2), gaps.end());
    f.median_gap_us = gaps[gaps.size() / 2];
  }
  return f;
}

void BM_step_plan(benchmark::State& state) {
  planner_options o;
  o.max_running = 512;
  o.num_pages = 1 << 16;  // 256 x (512 + 2000 tokens) / 16 fits: no preemption
  o.page_size = 16;
  o.limits = {1 << 20, 256};
  o.ubatches = {2, 2};
  dispatch_router router(capture_ladder::standard(512));
  for (std::uint32_t rung : router.ladder().sizes()) router.declare(dispatch_mode::full, dispatch_key::for_tokens(rung));
  step_planner planner(o, std::move(router));
  step_updates updates;
  step_plan plan;
  request_id next = 1;
  // Decodes with 512 tokens of context (32 pages each), growing by one a step.
  const std::vector<std::int32_t> context(512, 3);
  for (int i = 0; i < 256; ++i) planner.add(next++, {.prompt = context, .max_tokens = 1 << 19}, updates);
  std::vector<std::int32_t> sampled(512, 7);
  // Until all 256 decode.
  for (int i = 0; i < 64; ++i) {
    planner.plan(4096, plan, updates);
    planner.commit(plan, sampled, updates);
    updates.clear();
  }
  const std::vector<std::int32_t> prompt(32, 5);
  double cpu_ns = 0.0;
  for (auto _ : state) {
    for (int i = 0; i < 16; ++i) planner.add(next++, {.prompt = prompt, .max_tokens = 1}, updates);
    const double c0 = thread_cpu_us();
    const auto t0 = std::chrono::steady_clock::now();
    planner.plan(4096, plan, updates);
    const auto t1 = std::chrono::steady_clock::now();
    cpu_ns += (thread_cpu_us() - c0) * 1e3;
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
    benchmark::DoNotOptimize(plan.num_tokens);
    planner.commit(plan, sampled, updates);  // the 16 prompts finish (max_tokens 1)
    updates.clear();
  }
  // CPU time of plan() alone: on a loaded machine the wall time includes
  // the time the thread waited for a core.
  state.counters["plan_cpu_ns"] = cpu_ns / static_cast<double>(state.iterations());
  state.counters["reqs"] = plan.num_reqs();
  state.counters["tokens"] = plan.num_tokens;
  state.counters["preemptions"] = static_cast<double>(planner.gauges().preemptions);
}
BENCHMARK(BM_step_plan)->UseManualTime()->Iterations(2000)->Unit(benchmark::kNanosecond);

void BM_step_host_overhead(benchmark::State& state) {
  null_model model(4, std::chrono::microseconds(0));
  loop_figures f;
  for (auto _ : state) f = run_loop(model, 256, 48, step_overlap::overlapped);
  state.counters["host_us_per_step"] = f.host_us_per_step;
  state.counters["thread_us_per_step"] = f.thread_us_per_step;
  state.counters["steps"] = static_cast<double>(f.steps);
}
BENCHMARK(BM_step_host_overhead)->Iterations(1)->Unit(benchmark::kMillisecond);

void BM_step_gap(benchmark::State& state) {
  // Each step holds the device for about 2 x 400 us, as two micro-batches of
  // kernels would; the host plans 256 decodes meanwhile.
  null_model model(4, std::chrono::microseconds(400));
  loop_figures overlapped, sequential;
  for (auto _ : state) {
    overlapped = run_loop(model, 256, 40, step_overlap::overlapped);
    sequential = run_loop(model, 256, 40, step_overlap::sequential);
  }
  state.counters["gap_overlapped_us"] = overlapped.median_gap_us;
  state.counters["gap_sequential_us"] = sequential.median_gap_us;
  state.counters["gap_ratio"] = sequential.median_gap_us / std::max(overlapped.median_gap_us, 1e-3);
}
BENCHMARK(BM_step_gap)->Iterations(1)->Unit(benchmark::kMillisecond);

void BM_tuner_regret(benchmark::State& state) {
  double worst = 1.0, worst_after_change = 1.0;
  for (auto _ : state) {
    for (std::uint64_t seed = 1; seed <= 8; ++seed) {
      std::mt19937_64 rng(seed);
      const double target = 50e6;
      const auto a = engine::test::tuner_cost_model::random(rng);
      const auto b = a.changed();
      batch_size_tuner tuner({.min_budget = 16, .max_budget = 8192, .target_step_time = std::chrono::milliseconds(50)});
      worst = std::min(worst, engine::test::tuner_score(tuner, a, rng, 400, target));
      worst_after_change = std::min(worst_after_change, engine::test::tuner_score(tuner, b, rng, 400, target));
    }
  }
  state.counters["regret"] = std::min(worst, worst_after_change);
  state.counters["regret_before_change"] = worst;
  state.counters["regret_after_change"] = worst_after_change;
}
BENCHMARK(BM_tuner_regret)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace
