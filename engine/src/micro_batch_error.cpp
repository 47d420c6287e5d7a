#include "cobatch/engine/micro_batch_error.hpp"

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

micro_batch_error::micro_batch_error(std::int32_t micro_batch, std::int32_t count, std::int32_t switches,
                                     std::exception_ptr cause, std::source_location where)
    : engine_error(errc::micro_batch_failed,
                   detail::cat("micro-batch ", micro_batch, " of ", count, " failed after ", switches,
                               switches == 1 ? " switch: " : " switches: ", describe_cause(cause),
                               "; its siblings were cancelled"),
                   where),
      micro_batch_(micro_batch),
      count_(count),
      switches_(switches),
      cause_(std::move(cause)) {}

}  // namespace cobatch::engine
