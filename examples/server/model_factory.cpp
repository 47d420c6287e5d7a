#include "model_factory.hpp"

#include "llama_model.hpp"

#include <chrono>
#include <stdexcept>
#include <string>

namespace cobatch::server {

loaded_model load_model(const engine_options& options, std::span<gpu::device* const> devices) {
  if (devices.size() != 1) {
    throw std::invalid_argument("--dcp-ranks " + std::to_string(devices.size()) +
                                ": the server's reference model (llama_model) runs on one rank; its attention "
                                "does not exchange partials across ranks");
  }
  llama_config config;
  std::shared_ptr<const llama_weights> weights;
  loaded_model m;
  if (options.model.safetensors) {
    weights = llama_weights::load_safetensors(*options.model.safetensors, config.max_context);
    std::string stem = *options.model.safetensors;
    if (const auto slash = stem.find_last_of('/'); slash != std::string::npos) stem = stem.substr(slash + 1);
    m.card.id = stem.substr(0, stem.size() - std::string(".safetensors").size());
  } else {
    weights = llama_weights::seeded(config, options.model.seed);
    m.card.id = "cobatch-llama-seeded-" + std::to_string(options.model.seed);
  }
  for (std::size_t r = 0; r < devices.size(); ++r) {
    m.ranks.push_back(std::make_shared<llama_model>(weights, options.kv_pages, options.page_size));
  }
  const auto& c = weights->config;
  m.card.vocab_size = static_cast<std::size_t>(c.vocab_size);
  m.card.context_length = static_cast<std::size_t>(c.max_context);
  m.card.created = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  // Byte-level: ids 0..255 are bytes; the next two, where the vocabulary
  // has them, begin and end a sequence.
  if (c.vocab_size >= 258) {
    m.bos = 256;
    m.eos = 257;
  }
  return m;
}

}  // namespace cobatch::server
