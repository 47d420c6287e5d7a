// generate: text for a few prompts, through the whole engine path on the
// host backend or on a CUDA device: step planning (admission, chunked prefill, micro-batch count
// and cuts, graph routes), two micro-batches per step, graphs captured on
// first use and replayed, decode-context parallelism over 2 in-process ranks
// (attention partials exchanged on the communication stream and merged),
// sampling, and the overlapped loop that plans step k+1 while step k runs.
//
// Usage: generate [options] [prompt ...]
//   --max-tokens N     tokens per prompt (default 24)
//   --temperature T    0 = greedy (default 0)
//   --top-p P          (default 1)
//   --seed S           sampling seed (default 1)
//   --weights FILE     safetensors weights (default: seeded random, seed 42)
//   --device host|cuda the backend (default host); cuda runs the model's cuBLAS
//                      and .cu kernels on CUDA device 0, one rank (the DCP
//                      group's communicators are the host backend's)
//   --ranks N          DCP ranks, 1 or 2 (default 2 on the host, 1 on CUDA)
//   --sequential       plan each step after the previous one finished
//   --trace FILE       Chrome/Perfetto trace (default generate.trace.json)
//
// With random weights the text is noise, but it is the same noise however
// the prompts are batched: try one prompt, then several.
#include "byte_tokenizer.hpp"
#include "dcp_group.hpp"
#include "llama_model.hpp"
#include "llama_weights.hpp"

#include <cobatch/coro/completion_reactor.hpp>
#include <cobatch/coro/run_loop.hpp>
#include <cobatch/coro/sync_wait.hpp>
#include <cobatch/coro/use_task.hpp>
#include <cobatch/coro/when_all.hpp>
#include <cobatch/engine/step/engine_loop.hpp>
#include <cobatch/engine/ubatch/timeline.hpp>
#include <cobatch/config.hpp>
#include <cobatch/gpu/host/host_device.hpp>

#if COBATCH_WITH_CUDA
#include <cobatch/gpu/cuda/cuda_device.hpp>
#include <cobatch/gpu/cuda/device_census.hpp>
#endif

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

using namespace cobatch;

namespace {

const char* to_text(engine::dispatch_mode m) {
  switch (m) {
    case engine::dispatch_mode::eager: return "eager";
    case engine::dispatch_mode::piecewise: return "piecewise graphs";
    case engine::dispatch_mode::full: return "full graph";
  }
  return "?";
}

int usage() {
  std::fprintf(stderr,
               "usage: generate [--max-tokens N] [--temperature T] [--top-p P] [--seed S] [--weights FILE]\n"
               "                [--device host|cuda] [--ranks 1|2] [--sequential] [--trace FILE] [prompt ...]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::int32_t max_tokens = 24;
  float temperature = 0.0f, top_p = 1.0f;
  std::uint64_t seed = 1;
  std::string weights_path, trace_path = "generate.trace.json";
  int ranks = 0;  // 0: the device's default
  std::string device_kind = "host";
  bool sequential = false;
  std::vector<std::string> prompts;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    if (a == "--max-tokens" && (v = value())) max_tokens = std::atoi(v);
    else if (a == "--temperature" && (v = value())) temperature = std::strtof(v, nullptr);
    else if (a == "--top-p" && (v = value())) top_p = std::strtof(v, nullptr);
    else if (a == "--seed" && (v = value())) seed = std::strtoull(v, nullptr, 10);
    else if (a == "--weights" && (v = value())) weights_path = v;
    else if (a == "--ranks" && (v = value())) ranks = std::atoi(v);
    else if (a == "--device" && (v = value())) device_kind = v;
    else if (a == "--trace" && (v = value())) trace_path = v;
    else if (a == "--sequential") sequential = true;
    else if (a.rfind("--", 0) == 0) return usage();
    else prompts.push_back(a);
  }
  const bool on_cuda = device_kind == "cuda";
  if (!on_cuda && device_kind != "host") {
    std::fprintf(stderr, "generate: --device %s: the devices are host and cuda\n", device_kind.c_str());
    return usage();
  }
  if (ranks == 0) ranks = on_cuda ? 1 : 2;
  if (ranks != 1 && ranks != 2) return usage();
  if (on_cuda && ranks != 1) {
    std::fprintf(stderr, "generate: --device cuda runs one rank (the DCP group's communicators are the host backend's)\n");
    return 2;
  }
#if COBATCH_WITH_CUDA
  if (on_cuda) {
    const auto census = gpu::cuda::take_device_census();
    if (census.error) {
      std::fprintf(stderr, "generate: --device cuda: cannot count CUDA devices: %s\n", census.error.message().c_str());
      return 1;
    }
    if (!census.usable()) {
      std::fprintf(stderr, "generate: --device cuda: %.*s\n", static_cast<int>(census.none_because.size()),
                   census.none_because.data());
      return 1;
    }
  }
#else
  if (on_cuda) {
    std::fprintf(stderr, "generate: --device cuda: this build of cobatch has no CUDA backend (configure with -DCOBATCH_CUDA=ON)\n");
    return 1;
  }
#endif
  if (prompts.empty())
    prompts = {"The quick brown fox", "cobatch runs micro-batches as coroutines", "Hello", "One thread, two streams, no barriers"};

  const model::llama_config config = model::llama_config::tiny();
  model::llama_weights weights;
  try {
    weights = weights_path.empty() ? model::llama_weights::seeded(config, 42)
                                   : model::llama_weights::load_safetensors(weights_path, config);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "generate: %s\n", e.what());
    return 1;
  }

  coro::run_loop loop;
  coro::completion_reactor reactor(loop.get_executor());
  loop.attach(reactor);
  std::vector<std::unique_ptr<gpu::device>> devices;
  std::unique_ptr<model::dcp_group> group = ranks > 1 ? std::make_unique<model::dcp_group>(ranks) : nullptr;
  std::vector<std::unique_ptr<model::llama_model>> models;
  std::vector<engine::engine_rank> engine_ranks;
  constexpr std::int32_t pages = 256, page_size = 16;
  try {
    for (int r = 0; r < ranks; ++r) {
#if COBATCH_WITH_CUDA
      if (on_cuda) devices.push_back(std::make_unique<gpu::cuda::cuda_device>(reactor, r));
#endif
      if (!on_cuda) {
        devices.push_back(std::make_unique<gpu::host::host_device>(
            reactor, gpu::host::device_options{"host rank " + std::to_string(r), r, std::size_t{1} << 30}));
      }
      models.push_back(std::make_unique<model::llama_model>(*devices.back(), weights,
                                                            model::llama_rank_options{pages, page_size, r, group.get()}));
      engine_ranks.push_back({devices.back().get(), models.back().get()});
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "generate: %s\n", e.what());
    return 1;
  }

  engine::engine_options options;
  options.planner.max_running = 64;
  options.planner.num_pages = pages;
  options.planner.page_size = page_size;
  options.planner.ubatches = {2, 2};
  options.planner.slicing.thresholds = {.decode_tokens = 2, .prefill_tokens = 16};
  options.fixed_budget = 64;  // small, so that prompts are prefilled in chunks beside decodes
  options.graph_max_tokens = 64;
  options.overlap = sequential ? engine::step_overlap::sequential : engine::step_overlap::overlapped;

  std::unique_ptr<engine::engine_loop> engine;
  try {
    engine = std::make_unique<engine::engine_loop>(loop.get_executor(), engine_ranks, options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "generate: %s\n", e.what());
    return 1;
  }
  engine::timeline trace;
  engine->set_timeline(&trace);

  std::printf("cobatch generate: %zu prompts on %s, %d DCP rank%s, 2 micro-batches per step, budget %d tokens, %s loop\n\n",
              prompts.size(), devices[0]->name().c_str(), ranks, ranks > 1 ? "s" : "", *options.fixed_budget,
              sequential ? "sequential" : "overlapped");
  std::printf("  step  reqs  tokens  prefill/decode  ubatches (tokens -> run as)            device us  gap us\n");
  engine->on_step([&](const engine::step_report& r) {
    const engine::step_plan& p = *r.plan;
    std::int32_t prefill = 0;
    for (const auto& q : p.requests) prefill += q.num_tokens > 1 || q.sample_index < 0 ? 1 : 0;
    std::string cuts;
    for (std::int32_t u = 0; u < p.ubatches.size(); ++u) {
      const auto& route = p.routes[static_cast<std::size_t>(u)];
      cuts += std::to_string(p.ubatches[u].real_tokens()) + "->" + std::to_string(route.run_tokens()) + " " +
              (route.mode == engine::dispatch_mode::eager ? "eager" : "graph") + "  ";
    }
    std::printf("  %4llu  %4d  %6d  %7d/%-6d  %-38s %9.0f  %6.1f\n", static_cast<unsigned long long>(p.step),
                p.num_reqs(), p.num_tokens, prefill, p.num_reqs() - prefill, cuts.c_str(),
                std::chrono::duration<double, std::micro>(r.outputs.device_time()).count(),
                std::chrono::duration<double, std::micro>(r.device_gap).count());
  });

  std::vector<engine::request_stream> streams;
  for (const auto& p : prompts) {
    streams.push_back(engine->submit({.prompt = model::byte_tokenizer::encode(p),
                                      .max_tokens = max_tokens,
                                      .sampling = {.temperature = temperature, .top_p = top_p, .seed = seed},
                                      .stop_tokens = {model::byte_tokenizer::eos}}));
  }
  std::vector<std::vector<std::int32_t>> tokens(prompts.size());
  std::vector<std::string> endings(prompts.size());
  auto consume = [&]() -> coro::task<void> {
    for (std::size_t i = 0; i < streams.size(); ++i) {
      while (true) {
        auto [ec, chunk] = co_await streams[i].async_next(coro::as_tuple_task);
        if (ec) break;
        tokens[i].insert(tokens[i].end(), chunk.tokens.begin(), chunk.tokens.end());
        if (chunk.last()) {
          endings[i] = std::string(engine::to_string(chunk.finish)) + (chunk.detail.empty() ? "" : ": " + chunk.detail);
          break;
        }
      }
    }
    engine->stop();
  };
  try {
    coro::sync_wait(loop, coro::when_all(engine->run(), consume()));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "generate: %s\n", e.what());
    return 1;
  }

  std::printf("\n");
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    std::string text = model::byte_tokenizer::decode(tokens[i]);
    for (char& c : text)
      if (static_cast<unsigned char>(c) < 32 || static_cast<unsigned char>(c) > 126) c = '.';
    std::printf("  [%zu] \"%s\"\n      -> %zu tokens (%s):", i, prompts[i].c_str(), tokens[i].size(), endings[i].c_str());
    for (std::int32_t t : tokens[i]) std::printf(" %d", t);
    std::printf("\n      as text: \"%s\"\n", text.c_str());
  }
  const engine::engine_gauges g = engine->gauges();
  const engine::runner_stats s = engine->runner(0).stats();
  std::printf("\n  steps %llu, tokens %llu, preemptions %llu, failed steps %llu\n",
              static_cast<unsigned long long>(g.steps), static_cast<unsigned long long>(g.tokens_generated),
              static_cast<unsigned long long>(g.preemptions), static_cast<unsigned long long>(g.failed_steps));
  std::printf("  micro-batches: %llu replayed graphs (%llu captured on first use), %llu eager\n",
              static_cast<unsigned long long>(s.graph_replays), static_cast<unsigned long long>(s.graph_captures),
              static_cast<unsigned long long>(s.eager_runs));

  // The timeline of the last steps, rank 0.
  std::ofstream json(trace_path);
  trace.write_chrome_trace(json);
  std::printf("  timeline: %zu spans of rank 0 written to %s (open in https://ui.perfetto.dev)\n", trace.size(),
              trace_path.c_str());
  (void)to_text;
  return 0;
}
