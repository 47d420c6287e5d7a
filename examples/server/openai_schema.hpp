// openai_schema: the OpenAI completions API as this server speaks it: the
// request it accepts (validated field by field), the bodies and stream chunks
// it answers with, and OpenAI's error object. JSON by nlohmann::json; this
// header keeps it out of the other translation units.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace cobatch::server {

/// What /v1/models says about the one model served.
struct model_card {
  std::string id;
  std::string tokenizer = "byte-level";
  std::size_t vocab_size = 0;
  std::size_t context_length = 0;  // prompt + generated tokens
  std::int64_t created = 0;        // unix seconds the server started
};

/// OpenAI's error object: {"error": {"message", "type", "param", "code"}}.
struct api_error {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // the offending field; empty: null
  std::string code;   // empty: null
};

struct completion_request {
  std::string model;
  /// The prompt as text (bytes, tokenized byte by byte) ...
  std::string prompt_text;
  /// ... or as token ids, when the client sent an array of integers.
  std::optional<std::vector<std::int32_t>> prompt_tokens;
  std::int32_t max_tokens = 16;  // OpenAI's default
  double temperature = 1.0;
  double top_p = 1.0;
  std::optional<std::uint64_t> seed;
  std::vector<std::string> stop;  // up to 4, none empty
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

/// Parses and checks a /v1/completions body against `model`. The error names
/// the first offending field in `param`; an unknown model is a 404.
std::variant<completion_request, api_error> parse_completion_request(std::string_view body,
                                                                     const model_card& model);

std::string error_body(const api_error& e);

enum class finish_reason { stop, length };
std::string_view finish_reason_name(finish_reason r) noexcept;

struct completion_usage {
  std::size_t prompt_tokens = 0;
  std::size_t completion_tokens = 0;
};

/// The non-streaming answer. `text` must be valid UTF-8 (utf8_stream makes it so).
std::string completion_body(std::string_view id, std::int64_t created, std::string_view model,
                            std::string_view text, finish_reason reason, completion_usage usage);

/// One `data:` payload of a stream: text so far not sent, and the finish
/// reason on the last one. With `usage`, the usage chunk (empty choices).
std::string completion_chunk(std::string_view id, std::int64_t created, std::string_view model,
                             std::string_view text, std::optional<finish_reason> reason);
std::string usage_chunk(std::string_view id, std::int64_t created, std::string_view model,
                        completion_usage usage);

std::string models_body(const model_card& model);
std::string health_body();

}  // namespace cobatch::server
