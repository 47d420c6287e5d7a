// The reference model's decode step on the host (OpenBLAS, one thread per
// stream) and on CUDA (cuBLAS and model_kernels.cu): the same seeded model,
// the same batch of requests, steps driven through the step_model interface
// (tests/cuda/model/model_driver.hpp) and waited for one by one. A figure
// per backend and model size: microseconds per decode step and tokens per
// second; no target (the ratio depends on the machine's CPU).
//
// Usage: cobatch_model_bench [--json PATH] [--steps N]
// Exit: 0, 77 where no CUDA device is visible ("SKIPPED: ..."), 1 a failure.
#include "model_driver.hpp"

#include <cobatch/gpu/cuda/cuda_device.hpp>
#include <cobatch/gpu/cuda/device_census.hpp>
#include <cobatch/gpu/host/host_device.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

using namespace cobatch;
using namespace cobatch::model;

namespace {

struct figure {
  std::string name;
  double value;
  std::string unit;
};

// Microseconds per decode step of `batch` requests after a prefill of
// `prompt` tokens each (the first decode steps warm up and are not timed).
double decode_step_us(coro::run_loop& loop, gpu::device& d, const llama_weights& w, std::int32_t batch,
                      std::int32_t prompt, int steps) {
  model_test::step_driver driver(loop, d, w, batch * prompt, batch, (prompt + steps + 8) / 16 + 1);
  std::mt19937 rng(1);
  std::vector<model_test::step_request> step(static_cast<std::size_t>(batch));
  for (auto& r : step) {
    r.tokens.resize(static_cast<std::size_t>(prompt));
    for (auto& t : r.tokens) t = static_cast<std::int32_t>(rng() % 256);
  }
  auto advance = [&](const model_test::step_result& out) {
    for (std::size_t i = 0; i < step.size(); ++i) {
      step[i].context_before += static_cast<std::int32_t>(step[i].tokens.size());
      step[i].tokens = {out.sampled[i]};
      ++step[i].sample_index;
    }
  };
  for (int s = 0; s < 3; ++s) advance(driver.run(step));
  const auto t0 = std::chrono::steady_clock::now();
  for (int s = 0; s < steps; ++s) advance(driver.run(step));
  const auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double, std::micro>(t1 - t0).count() / steps;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  int steps = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else if (arg == "--steps" && i + 1 < argc) {
      steps = std::atoi(argv[++i]);
      if (steps < 1) {
        std::cerr << "cobatch_model_bench: --steps must be at least 1\n";
        return 1;
      }
    } else {
      std::cerr << "usage: cobatch_model_bench [--json PATH] [--steps N]\n";
      return 1;
    }
  }
  const auto census = gpu::cuda::take_device_census();
  if (census.error) {
    std::cerr << "cobatch_model_bench: cudaGetDeviceCount: " << census.error.message() << "\n";
    return 1;
  }
  if (census.skip()) {
    std::cout << "SKIPPED: " << census.none_because << std::endl;
    return 77;
  }
  try {
    coro::run_loop loop;
    coro::completion_reactor reactor{loop.get_executor()};
    gpu::host::host_device host{reactor};
    gpu::cuda::cuda_device cuda{reactor, 0};
    loop.attach(reactor);
    // tiny: the tests' model; small: 4 layers of hidden 1024 (8 query heads
    // of 128 on 2 KV heads), a 32000-token vocabulary.
    llama_config small = llama_config::tiny();
    small.vocab_size = 32000;
    small.hidden = 1024;
    small.num_layers = 4;
    small.num_heads = 8;
    small.num_kv_heads = 2;
    small.head_dim = 128;
    small.intermediate = 2816;
    const std::pair<const char*, llama_config> models[] = {{"tiny", llama_config::tiny()}, {"small", small}};
    constexpr std::int32_t batch = 32, prompt = 16;
    std::vector<figure> figures;
    for (const auto& [name, config] : models) {
      const llama_weights w = llama_weights::seeded(config, 1);
      for (auto* d : {static_cast<gpu::device*>(&host), static_cast<gpu::device*>(&cuda)}) {
        const char* backend = d == &host ? "host" : "cuda";
        const double us = decode_step_us(loop, *d, w, batch, prompt, steps);
        const std::string base = std::string("model_decode_") + name + "_" + backend;
        figures.push_back({base + "_step_us", us, "us"});
        figures.push_back({base + "_tokens_per_s", batch * 1e6 / us, "tokens/s"});
        std::printf("%-8s %-5s decode step of %d requests: %10.1f us, %10.0f tokens/s\n", name, backend, batch, us,
                    batch * 1e6 / us);
      }
    }
    if (!json_path.empty()) {
      std::ofstream j(json_path);
      j << "{\n  \"batch\": " << batch << ",\n  \"steps\": " << steps << ",\n  \"figures\": [\n";
      for (std::size_t i = 0; i < figures.size(); ++i) {
        j << "    {\"name\": \"" << figures[i].name << "\", \"value\": " << figures[i].value << ", \"unit\": \""
          << figures[i].unit << "\"}" << (i + 1 < figures.size() ? "," : "") << "\n";
      }
      j << "  ]\n}\n";
      if (!j) {
        std::cerr << "cobatch_model_bench: cannot write " << json_path << "\n";
        return 1;
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "cobatch_model_bench: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
