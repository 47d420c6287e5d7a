// A byte-level tokenizer: token i < 256 is byte i; three special tokens
// follow. Every string round-trips, and any model with a vocabulary of 259
// can be driven by text.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace cobatch::model {

class byte_tokenizer {
 public:
  static constexpr std::int32_t bos = 256;
  static constexpr std::int32_t eos = 257;
  static constexpr std::int32_t pad = 258;
  static constexpr std::int32_t vocab_size = 259;

  /// The bytes of `text`, after a BOS when `add_bos`.
  static std::vector<std::int32_t> encode(std::string_view text, bool add_bos = true) {
    std::vector<std::int32_t> ids;
    ids.reserve(text.size() + 1);
    if (add_bos) ids.push_back(bos);
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  }

  /// Bytes back to text; specials are written as <bos>, <eos>, <pad>.
  /// Throws std::out_of_range naming an id outside the vocabulary.
  static std::string decode(const std::vector<std::int32_t>& ids) {
    std::string out;
    for (std::int32_t id : ids) {
      if (id >= 0 && id < 256) {
        out.push_back(static_cast<char>(id));
      } else if (id == bos) {
        out += "<bos>";
      } else if (id == eos) {
        out += "<eos>";
      } else if (id == pad) {
        out += "<pad>";
      } else {
        throw std::out_of_range("byte_tokenizer::decode: token " + std::to_string(id) + " is outside [0, 259)");
      }
    }
    return out;
  }
};

}  // namespace cobatch::model
