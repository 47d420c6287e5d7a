// The shape of the reference model: a small decoder shaped like Llama
// (embedding, RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP,
// LM head). Not part of the cobatch library: it gives the engine real work.
#pragma once

#include <cstdint>
#include <string>

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

  /// A configuration small enough for tests under sanitizers.
  static llama_config tiny() { return {}; }
  std::int32_t q_dim() const noexcept { return num_heads * head_dim; }
  std::int32_t kv_dim() const noexcept { return num_kv_heads * head_dim; }
};

/// Throws std::invalid_argument naming the field and value: a count < 1,
/// heads not a multiple of kv heads, head_dim not 64 or 128, a non-positive
/// epsilon or rope theta.
void validate(const llama_config& config);

}  // namespace cobatch::model
