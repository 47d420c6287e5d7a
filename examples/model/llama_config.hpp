// The shape of the reference model: a small decoder shaped like Llama
// (embedding, RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP,
// LM head). Not part of the cobatch library: it gives the engine real work.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace cobatch::model {

struct llama_config {
  std::int32_t vocab_size = 259;  ///< the byte tokenizer's: 256 bytes + 3 specials
  std::int32_t hidden = 128;
  std::int32_t num_layers = 2;
  std::int32_t num_heads = 2;
  std::int32_t num_kv_heads = 1;
  std::int32_t head_dim = 64;  ///< 64 or 128 (what the attention kernels serve)
  std::int32_t intermediate = 256;
  std::int32_t max_context = 512;
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;

  /// A configuration small enough for tests under sanitizers. Its weights
  /// (about 1 MB) stay in cache, so a step costs what its arithmetic costs,
  /// whatever the batch: unlike any real model.
  static llama_config tiny() { return {}; }
  /// A configuration whose weights (about 46 MB in f32) do not fit in cache,
  /// so a decode step of one request is bound by reading them, as a real
  /// model's is on a GPU: batching amortises that read over the batch.
  static llama_config small() {
    llama_config c;
    c.hidden = 512;
    c.num_layers = 4;
    c.num_heads = 8;
    c.num_kv_heads = 2;
    c.intermediate = 1408;
    c.max_context = 2048;
    return c;
  }
  /// "tiny" or "small"; anything else throws std::invalid_argument naming it.
  static llama_config named(std::string_view name);
  std::int32_t q_dim() const noexcept { return num_heads * head_dim; }
  std::int32_t kv_dim() const noexcept { return num_kv_heads * head_dim; }
};

/// Throws std::invalid_argument naming the field and value: a count < 1,
/// heads not a multiple of kv heads, head_dim not 64 or 128, a non-positive
/// epsilon or rope theta.
void validate(const llama_config& config);

}  // namespace cobatch::model
