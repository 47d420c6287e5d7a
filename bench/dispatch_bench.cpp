// Graph dispatch cost per step: key construction, padding, the lookup order
// and the cache lookup, on a warmed cache, for keys drawn at random.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "cobatch/engine/dispatch/graph_dispatcher.hpp"

namespace {

using namespace cobatch::engine;

struct bench_graph {
  std::uint64_t id;
};

// What a step tells the dispatcher: raw counts, turned into a key in the loop.
struct raw_step {
  std::uint32_t tokens;
  std::uint32_t requests;
  std::uint32_t query_len;  // 0: mixed batch
  step_feature features;
};

constexpr std::size_t key_count = 4096;  // a power of two: index with a mask

std::vector<raw_step> random_steps(std::uint32_t max_tokens) {
  std::vector<raw_step> steps;
  steps.reserve(key_count);
  std::uint64_t state = 0x243f6a8885a308d3ULL;
  auto next = [&] {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<std::uint32_t>(state >> 33);
  };
  while (steps.size() < key_count) {
    // A serving mix: half pure decode (up to 256 requests), the rest mixed
    // batches, some above the ladder, a few with LoRA.
    const auto kind = next() % 8;
    const step_feature f = next() % 16 == 0 ? step_feature::lora : step_feature::none;
    if (kind < 4) {
      const std::uint32_t reqs = next() % 256 + 1;
      steps.push_back({reqs, reqs, 1, f});
    } else {
      const std::uint32_t tokens = next() % (max_tokens + 128) + 1;
      const std::uint32_t reqs = next() % tokens + 1;
      steps.push_back({tokens, reqs, 0, f});
    }
  }
  return steps;
}

dispatch_key make_key(const raw_step& s) {
  return s.query_len != 0 ? dispatch_key::uniform_decode(s.requests, s.query_len, s.features)
                          : dispatch_key::mixed(s.tokens, s.requests, s.features);
}

// 51 piecewise graphs (every rung to 512) and 11 full decode graphs (rungs to
// 64): 62 captured, all resident.
graph_dispatcher<bench_graph> warmed_dispatcher() {
  dispatch_router router(capture_ladder::standard(512));
  for (auto s : router.ladder().sizes()) {
    router.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(s));
    if (s <= 64) router.declare(dispatch_mode::full, dispatch_key::uniform_decode(s, 1));
  }
  graph_dispatcher<bench_graph> d(std::move(router));
  d.capture_ahead([](graph_key k, stream_index) { return captured_graph<bench_graph>{{k.bits()}, 1 << 20}; });
  return d;
}

void BM_dispatch_random_key(benchmark::State& state) {
  auto d = warmed_dispatcher();
  const auto steps = random_steps(512);
  std::size_t i = 0;
  std::uint64_t graphs = 0;
  for (auto _ : state) {
    const raw_step& s = steps[i++ & (key_count - 1)];
    const auto decision = d.dispatch(make_key(s));
    benchmark::DoNotOptimize(decision);
    graphs += decision.entry != nullptr;
  }
  state.counters["graph_share"] = benchmark::Counter(static_cast<double>(graphs) / static_cast<double>(state.iterations()));
  state.counters["cached_graphs"] = static_cast<double>(d.cache().size());
}
BENCHMARK(BM_dispatch_random_key)->Unit(benchmark::kNanosecond);

// The lookup structure alone, against std::unordered_map with the same hash:
// why the cache and the router use an open-addressing index.
template <class Index>
void lookup_loop(benchmark::State& state, const Index& index, const std::vector<std::uint64_t>& probes) {
  std::size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(index(probes[i++ & (key_count - 1)]));
  }
}

std::vector<std::uint64_t> probe_words() {
  std::vector<std::uint64_t> probes;
  std::uint64_t state = 7;
  while (probes.size() < key_count) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    const auto t = static_cast<std::uint32_t>(state >> 33) % 640 + 1;  // some misses above 512
    probes.push_back(graph_key(dispatch_mode::piecewise, dispatch_key::for_tokens(t)).bits());
  }
  return probes;
}

void BM_dispatch_index_flat(benchmark::State& state) {
  detail::flat_key_index index;
  const auto ladder = capture_ladder::standard(512);
  for (auto s : ladder.sizes())
    index.insert(graph_key(dispatch_mode::piecewise, dispatch_key::for_tokens(s)).bits(), s);
  const auto probes = probe_words();
  lookup_loop(state, [&](std::uint64_t k) { return index.find(k); }, probes);
}
BENCHMARK(BM_dispatch_index_flat)->Unit(benchmark::kNanosecond);

void BM_dispatch_index_unordered_map(benchmark::State& state) {
  std::unordered_map<graph_key, std::uint32_t> index;
  const auto ladder = capture_ladder::standard(512);
  for (auto s : ladder.sizes())
    index.emplace(graph_key(dispatch_mode::piecewise, dispatch_key::for_tokens(s)), s);
  const auto probes = probe_words();
  lookup_loop(state,
              [&](std::uint64_t k) {
                const auto it = index.find(graph_key::from_bits(k));
                return it == index.end() ? 0xffffffffu : it->second;
              },
              probes);
}
BENCHMARK(BM_dispatch_index_unordered_map)->Unit(benchmark::kNanosecond);

}  // namespace
