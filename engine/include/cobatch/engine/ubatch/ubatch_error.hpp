// ubatch_error: how a failed step reports which micro-batch failed.
#pragma once

#include <cobatch/engine/error.hpp>

#include <cstdint>
#include <exception>
#include <source_location>

namespace cobatch::engine {

/// Thrown by a micro-batched step when one micro-batch failed (its siblings
/// were cancelled at their next switch). code() is errc::ubatch_failed;
/// what() names the micro-batch, how far it got and what it threw; cause()
/// is the original exception, for callers that handle it by type.
class ubatch_error : public engine_error {
 public:
  ubatch_error(std::int32_t ubatch, std::int32_t count, std::int32_t switches,
                    std::exception_ptr cause,
                    std::source_location where = std::source_location::current());

  /// Index of the micro-batch that failed first.
  std::int32_t ubatch() const noexcept { return ubatch_; }
  /// How many micro-batches the step had.
  std::int32_t count() const noexcept { return count_; }
  /// Switches the failed micro-batch had passed when it failed.
  std::int32_t switches() const noexcept { return switches_; }
  const std::exception_ptr& cause() const noexcept { return cause_; }

 private:
  std::int32_t ubatch_;
  std::int32_t count_;
  std::int32_t switches_;
  std::exception_ptr cause_;
};

}  // namespace cobatch::engine
