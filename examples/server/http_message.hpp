// http_message: the request the parser hands to the routes and the response
// the routes hand back to the connection.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cobatch::server {

/// The methods the routes tell apart; everything else is `other`, which the
/// routes answer with 405 on a known path.
enum class http_method { get, head, post, other };

struct http_header {
  std::string name;  // as sent; compare with iequals
  std::string value;
};

struct http_request {
  http_method method = http_method::other;
  std::string method_name;  // as sent, for the Allow/405 message
  std::string path;         // the target without its query
  std::string query;
  std::vector<http_header> headers;
  std::string body;
  bool keep_alive = true;  // HTTP/1.1 default, Connection: close, HTTP/1.0 rules

  /// The first header named `name` (case-insensitive), or empty.
  std::string_view header(std::string_view name) const noexcept;
};

struct http_response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  /// Extra headers (Retry-After, Allow, ...). Content-Length, Connection and
  /// Content-Type are written by the connection.
  std::vector<std::pair<std::string, std::string>> headers;
};

/// The reason phrase for `status` ("Not Found"); "Unknown" for codes we never send.
std::string_view reason_phrase(int status) noexcept;

bool iequals(std::string_view a, std::string_view b) noexcept;

}  // namespace cobatch::server
