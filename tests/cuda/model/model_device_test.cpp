// The reference model on CUDA (cuBLAS and model_kernels.cu) against the same
// model on the host (OpenBLAS): the same seeded weights, prompts and steps.
//
// Tolerance: logits agree within 1e-3 relative to the step's largest logit
// (at least 1). Both sides compute in f32 but sum in different orders
// (cuBLAS's blocked dot products vs OpenBLAS's, float vs double in RMSNorm,
// split-KV attention on the GPU), and differ by an ulp or two in expf and
// sincosf: errors of a few f32 ulps per operation, compounded over two
// layers of K <= 512 sums, stay near 1e-5 of the logits' scale. A real
// mistake (a transposed weight, a wrong row, position or head) moves logits
// by O(1). Greedy tokens must agree wherever the host's top two logits are
// further apart than twice the tolerance.
#include "model_driver.hpp"

#include "cuda/cuda_kernels.hpp"
#include "dcp_group.hpp"
#include "llama_weights.hpp"
#include "logit_gap.hpp"
#include "sampling.hpp"

#include <cobatch/gpu/cuda/cuda_device.hpp>
#include <cobatch/gpu/cuda/error.hpp>
#include <cobatch/gpu/host/host_device.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>

using namespace cobatch;
using namespace cobatch::model;
using cobatch::test::top2_gap;
using model_test::step_driver;
using model_test::step_request;

namespace {

struct rig {
  coro::run_loop loop;
  coro::completion_reactor reactor{loop.get_executor()};
  gpu::host::host_device host{reactor};
  gpu::cuda::cuda_device cuda{reactor, 0};
  rig() { loop.attach(reactor); }
};

std::vector<std::vector<std::int32_t>> random_prompts(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<std::int32_t>> prompts(n);
  for (auto& p : prompts) {
    p.resize(1 + rng() % 40);
    for (auto& t : p) t = static_cast<std::int32_t>(rng() % 256);
  }
  return prompts;
}

void compare_greedy(const llama_config& c) {
  rig r;
  const llama_weights w = llama_weights::seeded(c, 7);
  const auto prompts = random_prompts(6, 11);
  step_driver on_host(r.loop, r.host, w, 256, 8, 8);
  step_driver on_cuda(r.loop, r.cuda, w, 256, 8, 8);
  const auto vocab = static_cast<std::size_t>(c.vocab_size);
  // Prefill, then decodes fed with the host's tokens on both sides (teacher
  // forcing), so that every step compares the same contexts.
  std::vector<step_request> step(prompts.size());
  for (std::size_t i = 0; i < prompts.size(); ++i) step[i].tokens = prompts[i];
  double worst = 0.0;
  std::size_t tokens_compared = 0;
  for (int s = 0; s < 9; ++s) {
    const auto want = on_host.run(step);
    const auto have = on_cuda.run(step);
    for (std::size_t i = 0; i < step.size(); ++i) {
      const std::span<const float> lw(want.logits.data() + i * vocab, vocab), lh(have.logits.data() + i * vocab, vocab);
      float scale = 1.0f;
      for (float x : lw) scale = std::max(scale, std::fabs(x));
      double diff = 0.0;
      for (std::size_t v = 0; v < vocab; ++v) diff = std::max(diff, static_cast<double>(std::fabs(lw[v] - lh[v])));
      worst = std::max(worst, diff / scale);
      INFO("step " << s << " request " << i << " largest difference " << diff << " scale " << scale);
      CHECK(diff <= 1e-3 * scale);
      if (top2_gap(lw) > 2e-3f * scale) {
        CHECK(have.sampled[i] == want.sampled[i]);
        ++tokens_compared;
      }
    }
    for (std::size_t i = 0; i < step.size(); ++i) {
      step[i].context_before += static_cast<std::int32_t>(step[i].tokens.size());
      step[i].tokens = {want.sampled[i]};
      step[i].sample_index = s + 1;
    }
  }
  INFO("largest relative difference " << worst);
  CHECK(worst <= 1e-3);
  CHECK(tokens_compared >= 40);
}

}  // namespace

TEST_CASE("CUDA reference model equals the host model: logits within 1e-3, greedy tokens, prefill and decode",
          "[cuda][model]") {
  SECTION("tiny: head_dim 64, 2 query heads on 1 KV head") { compare_greedy(llama_config::tiny()); }
  SECTION("head_dim 128, 4 query heads on 2 KV heads, 3 layers") {
    llama_config c = llama_config::tiny();
    c.hidden = 256;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 128;
    c.num_layers = 3;
    c.intermediate = 512;
    compare_greedy(c);
  }
}

TEST_CASE("CUDA sampler draws what sample_token draws from the same logits (greedy, temperature, top-p)",
          "[cuda][model][sampling]") {
  rig r;
  const llama_config c = llama_config::tiny();
  const llama_weights w = llama_weights::seeded(c, 3);
  const auto prompts = random_prompts(8, 5);
  step_driver on_cuda(r.loop, r.cuda, w, 256, 8, 8);
  const float temperatures[] = {0.0f, 0.7f, 1.0f, 1.5f};
  const float top_ps[] = {1.0f, 0.9f, 0.5f, 1.0f};
  std::vector<step_request> step(prompts.size());
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    step[i].tokens = prompts[i];
    step[i].temperature = temperatures[i % 4];
    step[i].top_p = top_ps[(i / 2) % 4];
    step[i].seed = 1000 + i;
  }
  const auto vocab = static_cast<std::size_t>(c.vocab_size);
  std::vector<std::int32_t> scratch;
  std::size_t draws = 0, not_argmax = 0;
  for (int s = 0; s < 6; ++s) {
    // The logits the device sampled from are the ones it kept.
    const auto have = on_cuda.run(step);
    for (std::size_t i = 0; i < step.size(); ++i) {
      const std::span<const float> l(have.logits.data() + i * vocab, vocab);
      const std::int32_t want = sample_token(l, step[i].temperature, step[i].top_p, step[i].seed, step[i].sample_index, scratch);
      INFO("step " << s << " request " << i << " temperature " << step[i].temperature << " top_p " << step[i].top_p);
      CHECK(have.sampled[i] == want);
      ++draws;
      if (want != sample_token(l, 0.0f, 1.0f, 0, 0, scratch)) ++not_argmax;
    }
    for (std::size_t i = 0; i < step.size(); ++i) {
      step[i].context_before += static_cast<std::int32_t>(step[i].tokens.size());
      step[i].tokens = {have.sampled[i]};
      step[i].sample_index = s + 1;
    }
  }
  INFO(not_argmax << " of " << draws << " draws were not the argmax");
  CHECK(draws == 48);
}

TEST_CASE("CUDA reference model: typed errors for a wrong device, a DCP group on CUDA, cuBLAS codes",
          "[cuda][model]") {
  rig r;
  const llama_weights w = llama_weights::seeded(llama_config::tiny(), 1);
  CHECK_THROWS_AS(make_cuda_kernels(r.host, w), std::invalid_argument);
  dcp_group group(2);
  CHECK_THROWS_WITH(llama_model(r.cuda, w, llama_rank_options{64, 16, 0, &group}), Catch::Contains("host backend"));
  const std::error_code alloc(3, cublas_category());  // CUBLAS_STATUS_ALLOC_FAILED
  CHECK(alloc == std::errc::not_enough_memory);
  CHECK_THAT(alloc.message(), Catch::Contains("CUBLAS_STATUS_ALLOC_FAILED"));
  try {
    check_cublas(7, "cublasSgemm");  // CUBLAS_STATUS_INVALID_VALUE
    FAIL("check_cublas did not throw");
  } catch (const gpu::cuda::cuda_error& e) {
    CHECK(e.code() == std::errc::invalid_argument);
    CHECK(std::string(e.call()) == "cublasSgemm");
  }
}
