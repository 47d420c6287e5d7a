// Cost of planning micro-batches for one step on the host: it runs every
// step, before any kernel launch, so it must stay far below a decode step
// (tens of microseconds is already too much).
#include <cobatch/engine/ubatch/ubatch_slicing.hpp>

#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

namespace {

using namespace cobatch::engine;

// 4096 requests, fixed seed: 7 in 8 decode one token, the rest are prefill
// chunks of 16 to 128 tokens; context lengths up to 8192. About 40k tokens.
struct mixed_batch {
  std::vector<std::int32_t> query_start_loc{0};
  std::vector<std::int32_t> seq_lens;
  std::int32_t padded = 0;

  mixed_batch() {
    std::mt19937 rng(4096u);
    std::uniform_int_distribution<int> kind(0, 7), chunk(16, 128), context(0, 8192);
    for (int i = 0; i < 4096; ++i) {
      const std::int32_t q = kind(rng) == 0 ? chunk(rng) : 1;
      query_start_loc.push_back(query_start_loc.back() + q);
      seq_lens.push_back(q + context(rng));
    }
    padded = (query_start_loc.back() + 511) / 512 * 512;  // next rung of a 512-step ladder
  }
  batch_view view() const { return {query_start_loc, seq_lens, query_start_loc.back()}; }
};

const mixed_batch& batch() {
  static const mixed_batch b;
  return b;
}

void run(benchmark::State& state, split_mode mode, split_mode expected) {
  const batch_view view = batch().view();
  const slice_request request{2, batch().padded};
  slice_policy policy;
  policy.mode = mode;
  const ubatch_plan check = slice_batch(view, request, policy);
  if (!check.split() || check.mode() != expected) {
    state.SkipWithError("the benchmark batch did not split as intended");
    return;
  }
  for (auto _ : state) {
    ubatch_plan plan = slice_batch(view, request, policy);
    benchmark::DoNotOptimize(plan);
  }
  state.counters["tokens"] = view.num_tokens;
  state.counters["requests"] = static_cast<double>(view.num_reqs());
}

// Fresh plan per iteration: validation, cuts, two allocations, metadata copy.
void BM_slice_4096(benchmark::State& state) { run(state, split_mode::token_balanced, split_mode::token_balanced); }
BENCHMARK(BM_slice_4096)->Unit(benchmark::kNanosecond);

void BM_slice_4096_request_aligned(benchmark::State& state) {
  run(state, split_mode::request_aligned, split_mode::request_aligned);
}
BENCHMARK(BM_slice_4096_request_aligned)->Unit(benchmark::kNanosecond);

// The steady state of an engine that keeps one plan: no allocation.
void BM_slice_4096_reused_plan(benchmark::State& state) {
  const batch_view view = batch().view();
  const slice_request request{2, batch().padded};
  const slice_policy policy;
  ubatch_plan plan;
  for (auto _ : state) {
    slice_batch(view, request, policy, plan);
    benchmark::DoNotOptimize(plan);
  }
}
BENCHMARK(BM_slice_4096_reused_plan)->Unit(benchmark::kNanosecond);

}  // namespace
