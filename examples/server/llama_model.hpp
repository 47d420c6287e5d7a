// llama_model: a small decoder shaped like Llama, run by the engine through
// step_model: token embedding, per layer RMSNorm, rotary positions,
// grouped-query attention over the paged KV cache, SwiGLU MLP, then RMSNorm
// and the LM head; greedy or seeded temperature/top-p sampling. Matrix
// products are OpenBLAS's sgemm; the rest is plain loops (the model is small:
// the server exercises the engine, not the FLOPs).
//
// Weights are seeded random (`llama_config` gives the shapes) or read from a
// safetensors file with Hugging Face Llama names and layouts
// (model.layers.N.self_attn.q_proj.weight [out, in], ...), F32, F16 or BF16;
// the head counts come from the file's __metadata__ (num_attention_heads,
// num_key_value_heads, optionally rope_theta and rms_norm_eps).
//
// The vocabulary is byte-level: ids 0..255 are bytes, then BOS and EOS.
#pragma once

#include <cobatch/engine/step/step_model.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cobatch::server {

struct llama_config {
  std::int32_t vocab_size = 258;  // 256 bytes, BOS, EOS
  std::int32_t dim = 64;
  std::int32_t layers = 2;
  std::int32_t heads = 4;
  std::int32_t kv_heads = 2;
  std::int32_t ffn_dim = 128;
  std::int32_t max_context = 1024;
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  std::int32_t head_dim() const noexcept { return dim / heads; }
};

/// The weights, shared read-only by every rank's model.
struct llama_weights {
  struct layer {
    std::vector<float> attn_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up, w_down;
  };
  llama_config config;
  std::vector<float> embed;    // [vocab, dim]
  std::vector<layer> layers;
  std::vector<float> norm;     // [dim]
  std::vector<float> lm_head;  // [vocab, dim]

  /// Normal(0, 1/sqrt(fan_in)) weights from `seed`, norms at 1.
  static std::shared_ptr<const llama_weights> seeded(const llama_config& config, std::uint64_t seed);
  /// Throws std::runtime_error naming the file and the tensor on failure.
  static std::shared_ptr<const llama_weights> load_safetensors(const std::string& path, std::int32_t max_context);
};

/// One rank's model: the shared weights and this rank's KV cache. Decode
/// context parallelism over several ranks is not supported by this model
/// (its attention does not exchange partials); the constructor refuses it.
class llama_model final : public engine::step_model {
 public:
  llama_model(std::shared_ptr<const llama_weights> weights, std::int32_t kv_pages, std::int32_t page_size);
  ~llama_model() override;

  engine::model_info info() const override;
  std::int32_t segments() const override { return 1; }
  void bind(const engine::ubatch_io& io) override;
  void plan(const engine::step_plan&, std::int32_t, const engine::ubatch&, const engine::ubatch_io&,
            gpu::stream_ref) override {}
  void enqueue_segment(std::int32_t segment, const engine::ubatch_io& io, std::int32_t run_tokens,
                       gpu::stream_ref s) override;
  void enqueue_collective(std::int32_t, const engine::ubatch_io&, std::int32_t, gpu::stream_ref) override {}

 private:
  struct workspace;
  void forward(const engine::ubatch_io& io, workspace& w);

  std::shared_ptr<const llama_weights> weights_;
  std::int32_t kv_pages_;
  std::int32_t page_size_;
  std::vector<float> inv_freq_;                        // rotary frequencies, head_dim / 2
  std::vector<std::vector<float>> k_cache_, v_cache_;  // per layer: [pages * page_size, kv_heads, head_dim]
  std::vector<std::unique_ptr<workspace>> workspaces_;   // per micro-batch slot
};

}  // namespace cobatch::server
