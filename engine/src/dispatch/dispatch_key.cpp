#include "cobatch/engine/dispatch/dispatch_key.hpp"

#include <string>

#include "cobatch/engine/error.hpp"

namespace cobatch::engine {

std::string_view to_string(dispatch_mode mode) noexcept {
  switch (mode) {
    case dispatch_mode::eager: return "eager";
    case dispatch_mode::piecewise: return "piecewise";
    case dispatch_mode::full: return "full";
  }
  return "unknown";
}

void validate(dispatch_mode mode) {
  switch (mode) {
    case dispatch_mode::eager:
    case dispatch_mode::piecewise:
    case dispatch_mode::full: return;
  }
  throw_engine_error(errc::unknown_mode,
                     "unknown dispatch_mode " + std::to_string(static_cast<unsigned>(mode)) +
                         " (expected eager=0, piecewise=1 or full=2)");
}

namespace detail {

void reject_mixed_key(std::uint32_t tokens, std::uint32_t requests) {
  const std::string what = "dispatch_key::mixed(tokens=" + std::to_string(tokens) +
                           ", requests=" + std::to_string(requests) + "): ";
  if (tokens == 0) throw_engine_error(errc::empty_batch, what + "a batch needs at least one token");
  if (requests == 0) throw_engine_error(errc::empty_batch, what + "a batch needs at least one request");
  if (tokens > dispatch_key::max_tokens)
    throw_engine_error(errc::overflow, what + "tokens exceed " + std::to_string(dispatch_key::max_tokens));
  if (requests > dispatch_key::max_requests)
    throw_engine_error(errc::overflow,
                       what + "requests exceed " + std::to_string(dispatch_key::max_requests));
  throw_engine_error(errc::length_mismatch, what + "more requests than tokens (each request has a token)");
}

void reject_uniform_key(std::uint32_t requests, std::uint32_t query_len) {
  const std::string what = "dispatch_key::uniform_decode(requests=" + std::to_string(requests) +
                           ", query_len=" + std::to_string(query_len) + "): ";
  if (requests == 0) throw_engine_error(errc::empty_batch, what + "a batch needs at least one request");
  if (query_len == 0) throw_engine_error(errc::empty_batch, what + "query_len must be at least 1");
  if (requests > dispatch_key::max_requests)
    throw_engine_error(errc::overflow,
                       what + "requests exceed " + std::to_string(dispatch_key::max_requests));
  if (query_len > dispatch_key::max_query_len)
    throw_engine_error(errc::overflow,
                       what + "query_len exceeds " + std::to_string(dispatch_key::max_query_len));
  throw_engine_error(errc::overflow, what + "requests * query_len exceeds " +
                                         std::to_string(dispatch_key::max_tokens) + " tokens");
}

void reject_relaxed_key(std::uint32_t tokens) {
  const std::string what = "dispatch_key::for_tokens(tokens=" + std::to_string(tokens) + "): ";
  if (tokens == 0) throw_engine_error(errc::empty_batch, what + "a batch needs at least one token");
  throw_engine_error(errc::overflow, what + "tokens exceed " + std::to_string(dispatch_key::max_tokens));
}

}  // namespace detail
}  // namespace cobatch::engine
