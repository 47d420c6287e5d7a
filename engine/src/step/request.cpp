#include "cobatch/engine/step/request.hpp"

#include "message.hpp"

#include <cmath>
#include <string>

namespace cobatch::engine {

std::string_view to_string(finish_reason reason) noexcept {
  switch (reason) {
    case finish_reason::none: return "none";
    case finish_reason::length: return "length";
    case finish_reason::stop: return "stop";
    case finish_reason::cancelled: return "cancelled";
    case finish_reason::refused: return "refused";
    case finish_reason::failed: return "failed";
  }
  return "unknown";
}

namespace {

// The message is built only where a caller will read it.
errc check(const sampling_params& p, std::string* why) {
  if (!std::isfinite(p.temperature) || p.temperature < 0.0f) {
    if (why) *why = detail::cat("sampling_params: temperature ", static_cast<double>(p.temperature),
                                " is not a finite value >= 0");
    return errc::invalid_argument;
  }
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    if (why) *why = detail::cat("sampling_params: top_p ", static_cast<double>(p.top_p), " is outside (0, 1]");
    return errc::invalid_argument;
  }
  return errc{};
}

errc check(const generation_request& r, const request_limits& limits, std::string* why) {
  if (r.prompt.empty()) {
    if (why) *why = "generation_request: the prompt is empty";
    return errc::empty_batch;
  }
  if (r.max_tokens < 1) {
    if (why) *why = detail::cat("generation_request: max_tokens ", r.max_tokens, " < 1");
    return errc::invalid_argument;
  }
  const std::int64_t need = static_cast<std::int64_t>(r.prompt.size()) + r.max_tokens;
  if (need > limits.max_context) {
    if (why)
      *why = detail::cat("generation_request: prompt of ", r.prompt.size(), " tokens + max_tokens ", r.max_tokens,
                         " = ", need, " exceeds the context of ", limits.max_context, " tokens");
    return errc::overflow;
  }
  for (std::size_t i = 0; i < r.prompt.size(); ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= limits.vocab_size) {
      if (why)
        *why = detail::cat("generation_request: prompt token ", i, " is ", r.prompt[i], ", outside the vocabulary [0, ",
                           limits.vocab_size, ")");
      return errc::invalid_argument;
    }
  }
  for (std::int32_t t : r.stop_tokens) {
    if (t < 0 || t >= limits.vocab_size) {
      if (why) *why = detail::cat("generation_request: stop token ", t, " is outside the vocabulary [0, ", limits.vocab_size, ")");
      return errc::invalid_argument;
    }
  }
  return check(r.sampling, why);
}

}  // namespace

void validate(const sampling_params& params) {
  std::string why;
  if (errc e = check(params, &why); e != errc{}) throw_engine_error(e, why);
}
void validate(const sampling_params& params, std::error_code& ec) noexcept {
  const errc e = check(params, nullptr);
  ec = e == errc{} ? std::error_code{} : make_error_code(e);
}
void validate(const generation_request& request, const request_limits& limits) {
  std::string why;
  if (errc e = check(request, limits, &why); e != errc{}) throw_engine_error(e, why);
}
void validate(const generation_request& request, const request_limits& limits, std::error_code& ec) noexcept {
  const errc e = check(request, limits, nullptr);
  ec = e == errc{} ? std::error_code{} : make_error_code(e);
}

}  // namespace cobatch::engine
