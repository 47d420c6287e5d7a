// The capture-size ladder: the token counts graphs are captured for, and the
// padding of a step's token count up to the next of them.
//
// Padding happens on every step, so it is one load from a table indexed by the
// token count (vLLM's bs_to_padded_graph_size), built once. The table costs
// 4 bytes per token of the largest size: 2 KiB for the default 512.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <vector>

namespace cobatch::engine {

class capture_ladder {
 public:
  /// vLLM's default: 1, 2, 4, then every 8 up to 256, then every 16 up to
  /// `max_size`. `max_size` itself is always the last rung (appended when it is
  /// off the step), so "graphs up to max_size" means exactly that; rungs above
  /// it are dropped. Throws engine_error(invalid_argument) when max_size is 0 or
  /// above dispatch_key::max_tokens.
  static capture_ladder standard(std::uint32_t max_size = 512);

  /// Any ladder: sizes strictly increasing, all positive, at most
  /// dispatch_key::max_tokens. Throws engine_error(invalid_argument) naming the
  /// offending value and its position otherwise (and for an empty list).
  explicit capture_ladder(std::span<const std::uint32_t> sizes);
  capture_ladder(std::initializer_list<std::uint32_t> sizes)
      : capture_ladder(std::span<const std::uint32_t>(sizes.begin(), sizes.size())) {}

  /// The smallest rung >= tokens, or nullopt when tokens exceed the largest
  /// rung (such a step runs eagerly and unpadded) or is 0 (nothing to run).
  std::optional<std::uint32_t> pad(std::uint32_t tokens) const noexcept {
    if (tokens >= padded_.size()) return std::nullopt;
    const std::uint32_t p = padded_[tokens];
    if (p == 0) return std::nullopt;
    return p;
  }

  /// True when `tokens` is one of the rungs.
  bool contains(std::uint32_t tokens) const noexcept {
    return tokens != 0 && tokens < padded_.size() && padded_[tokens] == tokens;
  }

  std::uint32_t max_size() const noexcept { return sizes_.back(); }
  std::span<const std::uint32_t> sizes() const noexcept { return sizes_; }

 private:
  std::vector<std::uint32_t> sizes_;
  std::vector<std::uint32_t> padded_;  // index: token count 0..max_size; [0] == 0
};

}  // namespace cobatch::engine
