#include "cobatch/engine/attention/dcp.hpp"

#include "attention_check.hpp"
#include "message.hpp"

#include <string>

namespace cobatch::engine {

namespace detail {
fault check_dcp(const dcp_layout& l, const char* api, std::string* detail) {
  if (l.world < 1) return fail(detail, errc::invalid_argument, api, ": dcp world=", l.world, " < 1");
  if (l.rank < 0 || l.rank >= l.world) {
    return fail(detail, errc::invalid_argument, api, ": dcp rank=", l.rank, " is outside [0, world=", l.world, ")");
  }
  if (l.interleave < 1) return fail(detail, errc::invalid_argument, api, ": dcp interleave=", l.interleave, " < 1");
  return {};
}
}  // namespace detail

void validate_dcp_layout(const dcp_layout& layout, const char* api) {
  std::string text;
  if (const auto f = detail::check_dcp(layout, api, &text)) throw_engine_error(f.code, text);
}

void validate_dcp_layout(const dcp_layout& layout, std::error_code& ec) noexcept {
  ec.clear();
  if (const auto f = detail::check_dcp(layout, "", nullptr)) ec = make_error_code(f.code);
}

}  // namespace cobatch::engine
