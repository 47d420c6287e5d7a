// What a user asks the engine for: a prompt, how many tokens, how to sample
// them, when to stop; and why a request ended. Checked here once, so that a
// bad request is refused with a reason before it costs a page.
#pragma once

#include <cobatch/engine/error.hpp>

#include <cstdint>
#include <string_view>
#include <system_error>
#include <vector>

namespace cobatch::engine {

/// Names a request for its whole life; given by the engine, never reused.
using request_id = std::uint64_t;

/// How the next token is drawn from the logits.
///
/// temperature == 0 is greedy (argmax, the lowest token id on ties); above 0
/// the logits are divided by it, then top-p keeps the smallest set of most
/// likely tokens whose probability reaches `top_p`, and one is drawn with a
/// generator seeded from (seed, the index of the token in the output), so a
/// request gives the same tokens however it is batched, split or preempted.
struct sampling_params {
  float temperature = 0.0f;  ///< >= 0 and finite
  float top_p = 1.0f;        ///< (0, 1]
  std::uint64_t seed = 0;
};

struct generation_request {
  std::vector<std::int32_t> prompt;  ///< token ids, at least one
  std::int32_t max_tokens = 16;      ///< tokens to generate, >= 1
  sampling_params sampling{};
  /// Generation ends after any of these is produced (it is delivered).
  std::vector<std::int32_t> stop_tokens{};  // {}: requests that leave it out do not warn (-Wextra)
};

/// Why a request ended; `none` while it runs.
enum class finish_reason : std::uint8_t {
  none,
  length,     ///< max_tokens produced
  stop,       ///< a stop token produced
  cancelled,  ///< cancel() or the engine stopped
  refused,    ///< never admitted: bad input or it can never fit (the error says which)
  failed,     ///< its steps failed more often than the retry limit
};

/// "none", "length", "stop", "cancelled", "refused", "failed".
std::string_view to_string(finish_reason reason) noexcept;

/// What a model accepts; requests are checked against it.
struct request_limits {
  std::int32_t max_context = 0;  ///< prompt + max_tokens must fit
  std::int32_t vocab_size = 0;   ///< token ids in [0, vocab_size)
};

/// Throws engine_error(invalid_argument) naming the field and value: a
/// temperature that is negative or not finite, a top_p outside (0, 1].
void validate(const sampling_params& params);
void validate(const sampling_params& params, std::error_code& ec) noexcept;

/// Checks a request against `limits`; engine_error carries:
/// - errc::empty_batch: an empty prompt;
/// - errc::invalid_argument: max_tokens < 1, a token id or stop token
///   outside the vocabulary, a bad sampling value;
/// - errc::overflow: prompt + max_tokens longer than limits.max_context.
void validate(const generation_request& request, const request_limits& limits);
void validate(const generation_request& request, const request_limits& limits, std::error_code& ec) noexcept;

}  // namespace cobatch::engine
