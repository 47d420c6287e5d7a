#include "cobatch/engine/ubatch/ubatch_error.hpp"

#include "message.hpp"

#include <system_error>

namespace cobatch::engine {
namespace {

std::string describe_cause(const std::exception_ptr& cause) {
  if (!cause) return "unknown failure";
  try {
    std::rethrow_exception(cause);
  } catch (const std::system_error& e) {
    return detail::cat(e.what(), " (", e.code().category().name(), ":", e.code().value(), ")");
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "an exception not derived from std::exception";
  }
}

}  // namespace

ubatch_error::ubatch_error(std::int32_t ubatch, std::int32_t count, std::int32_t switches,
                                     std::exception_ptr cause, std::source_location where)
    : engine_error(errc::ubatch_failed,
                   detail::cat("micro-batch ", ubatch, " of ", count, " failed after ", switches,
                               switches == 1 ? " switch: " : " switches: ", describe_cause(cause),
                               "; its siblings were cancelled"),
                   where),
      ubatch_(ubatch),
      count_(count),
      switches_(switches),
      cause_(std::move(cause)) {}

}  // namespace cobatch::engine
