// The reference model's weights, in Hugging Face Llama's layout and names
// (each projection [out][in], row-major), seeded at random or read from a
// safetensors file.
#pragma once

#include "llama_config.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace cobatch::model {

struct llama_layer_weights {
  std::vector<float> attn_norm;  ///< [hidden]
  std::vector<float> wq;         ///< [q_dim][hidden]
  std::vector<float> wk;         ///< [kv_dim][hidden]
  std::vector<float> wv;         ///< [kv_dim][hidden]
  std::vector<float> wo;         ///< [hidden][q_dim]
  std::vector<float> mlp_norm;   ///< [hidden]
  std::vector<float> w_gate;     ///< [intermediate][hidden]
  std::vector<float> w_up;       ///< [intermediate][hidden]
  std::vector<float> w_down;     ///< [hidden][intermediate]
};

struct llama_weights {
  llama_config config;
  std::vector<float> embed;       ///< [vocab][hidden]
  std::vector<llama_layer_weights> layers;
  std::vector<float> final_norm;  ///< [hidden]
  std::vector<float> lm_head;     ///< [vocab][hidden]

  /// Weights drawn uniformly with the variance of a trained model's
  /// initialisation, from `seed`: the same seed gives the same model.
  static llama_weights seeded(const llama_config& config, std::uint64_t seed);

  /// Reads a safetensors file with Hugging Face Llama names
  /// (model.embed_tokens.weight, model.layers.N.self_attn.q_proj.weight, ...,
  /// lm_head.weight, or tied to the embedding when absent), in F32, BF16 or
  /// F16. The header's JSON is parsed with nlohmann::json. Throws
  /// std::runtime_error naming the file and the tensor for a short file, a
  /// bad header, a missing tensor, an unknown dtype or a shape that does not
  /// match `config`.
  static llama_weights load_safetensors(const std::string& path, const llama_config& config);

  /// Writes these weights as F32 safetensors under the same names.
  void save_safetensors(const std::string& path) const;
};

}  // namespace cobatch::model
