// model_factory: the reference model behind the server (examples/model, one
// shard per decode-context-parallel rank) and what the HTTP side needs to
// know of it: its name, vocabulary and context, and its byte-level
// tokenizer's special tokens. The one file that names the model.
#pragma once

#include "engine_service.hpp"

#include <cobatch/engine/step/step_model.hpp>
#include <cobatch/gpu/device.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

namespace cobatch::server {

struct loaded_model {
  /// What the ranks borrow (weights, the in-process DCP group); destroyed
  /// after them.
  std::shared_ptr<void> shared;
  /// One per rank, in rank order; the engine drives them.
  std::vector<std::unique_ptr<engine::step_model>> ranks;
  model_card card;
  /// Byte-level vocabulary: ids 0..255 are the bytes; these are extra.
  std::optional<std::int32_t> bos;  ///< put in front of every prompt
  std::optional<std::int32_t> eos;  ///< ends generation (a stop token)

  loaded_model() = default;
  loaded_model(loaded_model&&) = default;
  loaded_model& operator=(loaded_model&&) = default;
  ~loaded_model() {
    ranks.clear();  // before what they borrow
  }
};

/// Builds the reference model from `options.model` (seeded random weights or
/// a safetensors file) for `devices.size()` ranks. Throws naming the file or
/// value on failure.
loaded_model load_model(const engine_options& options, std::span<gpu::device* const> devices);

}  // namespace cobatch::server
