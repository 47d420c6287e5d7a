#include "model_factory.hpp"

#include "byte_tokenizer.hpp"
#include "dcp_group.hpp"
#include "llama_model.hpp"
#include "llama_weights.hpp"

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>

namespace cobatch::server {
namespace {

// What every rank's model refers to, kept alive as long as they run.
struct reference_model_state {
  model::llama_weights weights;
  std::unique_ptr<model::dcp_group> group;
};

}  // namespace

loaded_model load_model(const engine_options& options, std::span<gpu::device* const> devices) {
  const model::llama_config config = model::llama_config::named(options.model.shape);
  auto state = std::make_shared<reference_model_state>();
  loaded_model m;
  if (options.model.safetensors) {
    state->weights = model::llama_weights::load_safetensors(*options.model.safetensors, config);
    std::string stem = *options.model.safetensors;
    if (const auto slash = stem.find_last_of('/'); slash != std::string::npos) stem = stem.substr(slash + 1);
    m.card.id = stem.substr(0, stem.size() - std::string(".safetensors").size());
  } else {
    state->weights = model::llama_weights::seeded(config, options.model.seed);
    m.card.id = "cobatch-llama-seeded-" + std::to_string(options.model.seed);
    if (options.model.shape != "tiny") m.card.id += "-" + options.model.shape;
  }
  const int world = static_cast<int>(devices.size());
  // One rank may use every core for its matrix products (the HTTP side is
  // I/O bound); several ranks share them, each on its own stream worker.
  std::int32_t blas_threads = options.blas_threads;
  if (blas_threads == 0)
    blas_threads = std::max<std::int32_t>(1, static_cast<std::int32_t>(std::thread::hardware_concurrency()) / world);
  if (world > 1) state->group = std::make_unique<model::dcp_group>(world);
  for (int r = 0; r < world; ++r) {
    m.ranks.push_back(std::make_unique<model::llama_model>(
        *devices[static_cast<std::size_t>(r)], state->weights,
        model::llama_rank_options{options.kv_pages, options.page_size, r, state->group.get(), blas_threads}));
  }
  m.shared = state;
  m.card.vocab_size = static_cast<std::size_t>(config.vocab_size);
  m.card.context_length = static_cast<std::size_t>(config.max_context);
  m.card.created = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  m.bos = model::byte_tokenizer::bos;
  m.eos = model::byte_tokenizer::eos;
  return m;
}

}  // namespace cobatch::server
