// Typed errors of the engine layer: bad plans, bad slices, failed steps.
#pragma once

#include <source_location>
#include <stdexcept>
#include <string>
#include <system_error>

namespace cobatch::engine {

enum class errc {
  invalid_argument = 1,   ///< a parameter is out of its documented range
  length_mismatch,        ///< per-request lengths do not add up to the totals given
  negative_length,        ///< a length or count is negative
  empty_batch,            ///< a batch with no tokens or no requests where one is required
  too_many_ubatches, ///< more micro-batches asked for than there are tokens
  overflow,               ///< a sum does not fit its type
  unknown_mode,           ///< an enumerator outside the known set
  ubatch_failed,     ///< a micro-batch of a step failed; its siblings were cancelled
  no_capacity,            ///< nothing fits the budget (memory, cache entries)
  address_changed,        ///< a graph replay would read a buffer whose address changed since capture
};

const std::error_category& engine_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), engine_category()};
}

/// Thrown by the engine's throwing overloads. Carries the code, a detail
/// message built only on failure ("<api call>: <what was wrong, with the
/// offending value>"), and where the failure was detected. The message never
/// carries the source location: it names the call the user made, not a file
/// of the build machine; where() is for debuggers.
class engine_error : public std::system_error {
 public:
  engine_error(errc code, const std::string& detail,
               std::source_location where = std::source_location::current());
  const std::source_location& where() const noexcept { return where_; }

 private:
  std::source_location where_;
};

/// Throws engine_error; kept out of line so that hot paths stay small.
[[noreturn]] void throw_engine_error(errc code, const std::string& detail,
                                     std::source_location where = std::source_location::current());

}  // namespace cobatch::engine

template <>
struct std::is_error_code_enum<cobatch::engine::errc> : std::true_type {};
