// Private to the engine's sources: builds the detail text of an error. Kept
// out of the public headers so that they stay free of string formatting.
#pragma once

#include <cobatch/engine/error.hpp>

#include <concepts>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <system_error>

namespace cobatch::engine::detail {

inline void append(std::string& out, std::string_view text) { out += text; }
inline void append(std::string& out, const char* text) { out += text; }
inline void append(std::string& out, const std::string& text) { out += text; }
template <std::integral I>
void append(std::string& out, I value) { out += std::to_string(value); }
inline void append(std::string& out, double value) {
  // to_string's fixed six decimals would print 1e-7 as 0.000000; %g does not.
  char buffer[32];
  const int n = std::snprintf(buffer, sizeof buffer, "%g", value);
  out.append(buffer, static_cast<std::size_t>(n > 0 ? n : 0));
}

template <class... Parts>
std::string cat(const Parts&... parts) {
  std::string out;
  (append(out, parts), ...);
  return out;
}

/// A failure found by a check: the code and, where the caller asked for it,
/// the text. Checks take a `std::string*`: null on the error_code path, so
/// that text is only built when it will be read.
struct fault {
  errc code{};
  explicit operator bool() const noexcept { return code != errc{}; }
};

template <class... Parts>
fault fail(std::string* detail, errc code, const Parts&... parts) {
  if (detail != nullptr) *detail = cat(parts...);
  return fault{code};
}

/// Turns a fault into the throwing overload `api`'s exception: the message
/// names the call, then the check's detail.
[[noreturn]] inline void raise(fault f, std::string_view api, const std::string& detail) {
  throw_engine_error(f.code, cat(api, ": ", detail));
}
/// For checks whose detail already begins with the call's name.
[[noreturn]] inline void raise(fault f, const std::string& detail) { throw_engine_error(f.code, detail); }

/// An option out of its range: errc::invalid_argument reading
/// "<api>: <option> <value> <rule>", e.g. "step_runner: ring 0 < 1".
template <class Value>
[[noreturn]] void raise_bad_option(std::string_view api, std::string_view option, const Value& value,
                                   std::string_view rule) {
  throw_engine_error(errc::invalid_argument, cat(api, ": ", option, " ", value, " ", rule));
}

/// The check most options take: raises "<api>: <option> <value> < <min>"
/// unless value >= min.
inline void require_at_least(std::string_view api, std::string_view option, std::int64_t value, std::int64_t min) {
  if (value < min) raise_bad_option(api, option, value, cat("< ", min));
}

}  // namespace cobatch::engine::detail
