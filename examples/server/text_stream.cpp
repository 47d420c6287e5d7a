#include "text_stream.hpp"

#include <algorithm>

namespace cobatch::server {
namespace {

constexpr std::string_view replacement = "\xEF\xBF\xBD";

struct lead_info {
  int length;                // 0: not a lead byte
  unsigned char lo, hi;      // range of the second byte
};

// Unicode's table 3-7 of well-formed UTF-8 byte sequences.
lead_info lead(unsigned char c) {
  if (c < 0x80) return {1, 0, 0};
  if (c >= 0xC2 && c <= 0xDF) return {2, 0x80, 0xBF};
  if (c == 0xE0) return {3, 0xA0, 0xBF};
  if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) return {3, 0x80, 0xBF};
  if (c == 0xED) return {3, 0x80, 0x9F};  // no surrogates
  if (c == 0xF0) return {4, 0x90, 0xBF};
  if (c >= 0xF1 && c <= 0xF3) return {4, 0x80, 0xBF};
  if (c == 0xF4) return {4, 0x80, 0x8F};  // nothing above U+10FFFF
  return {0, 0, 0};
}

}  // namespace

std::string sanitize_utf8(std::string_view s, bool final, std::size_t* held) {
  std::string out;
  out.reserve(s.size());
  if (held != nullptr) *held = 0;
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const lead_info info = lead(c);
    if (info.length == 1) {
      out += static_cast<char>(c);
      ++i;
      continue;
    }
    if (info.length == 0) {
      out += replacement;
      ++i;
      continue;
    }
    // Count the continuation bytes that fit, stopping at the first that does not.
    int k = 1;
    while (k < info.length && i + k < s.size()) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      const bool ok = k == 1 ? (b >= info.lo && b <= info.hi) : (b >= 0x80 && b <= 0xBF);
      if (!ok) break;
      ++k;
    }
    if (k == info.length) {
      out.append(s.substr(i, static_cast<std::size_t>(k)));
    } else if (i + k == s.size() && !final) {
      // A valid beginning cut off by the end: its rest may still come.
      if (held != nullptr) *held = s.size() - i;
      return out;
    } else {
      out += replacement;  // the maximal ill-formed subpart
    }
    i += static_cast<std::size_t>(k);
  }
  return out;
}

text_stream::text_stream(std::vector<std::string> stop) : stop_(std::move(stop)) {
  for (const auto& s : stop_) longest_stop_ = std::max(longest_stop_, s.size());
}

bool text_stream::append(std::string_view bytes) {
  if (stopped_) return true;
  const std::size_t before = bytes_.size();
  bytes_ += bytes;
  if (stop_.empty()) return false;
  // A match may begin in the bytes held before this append.
  const std::size_t from = before >= longest_stop_ ? before - longest_stop_ + 1 : 0;
  std::size_t first = std::string::npos;
  for (const auto& s : stop_) {
    const std::size_t at = bytes_.find(s, from);
    if (at != std::string::npos) first = std::min(first, at);
  }
  if (first == std::string::npos) return false;
  bytes_.resize(first);
  stopped_ = true;
  return true;
}

std::size_t text_stream::stop_holdback() const noexcept {
  if (stopped_) return 0;
  // The longest tail of the bytes that is a proper prefix of a stop sequence.
  std::size_t hold = 0;
  for (const auto& s : stop_) {
    for (std::size_t n = std::min(s.size() - 1, bytes_.size() - taken_); n > hold; --n) {
      if (std::string_view(bytes_).substr(bytes_.size() - n) == std::string_view(s).substr(0, n)) {
        hold = n;
        break;
      }
    }
  }
  return hold;
}

std::string text_stream::take_until(std::size_t end, bool final) {
  std::size_t held = 0;
  std::string text = sanitize_utf8(std::string_view(bytes_).substr(taken_, end - taken_), final, &held);
  taken_ = end - held;
  return text;
}

std::string text_stream::take_ready() {
  const std::size_t end = bytes_.size() - stop_holdback();
  if (end <= taken_) return {};
  return take_until(end, stopped_);
}

std::string text_stream::take_rest() { return take_until(bytes_.size(), true); }

}  // namespace cobatch::server
