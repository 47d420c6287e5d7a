// request_parser: HTTP/1.1 requests out of a byte stream, by the Node.js
// http_parser library (Debian's libhttp-parser), with the server's size limits
// applied while the bytes arrive rather than after.
#pragma once

#include "http_message.hpp"

#include <cstddef>
#include <memory>
#include <string_view>

namespace cobatch::server {

struct parser_limits {
  std::size_t max_header_bytes = 16 * 1024;    // request line + headers
  std::size_t max_body_bytes = 1024 * 1024;
};

enum class parse_status {
  need_more,         // the request is not complete; feed more bytes
  complete,          // request() holds a whole request; the rest is unconsumed
  bad_request,       // malformed: 400 and close
  header_too_large,  // 431 and close
  body_too_large,    // 413 and close
};

class request_parser {
 public:
  explicit request_parser(parser_limits limits);
  ~request_parser();
  request_parser(const request_parser&) = delete;
  request_parser& operator=(const request_parser&) = delete;

  /// Forgets the request parsed so far and starts a new one.
  void reset();

  struct result {
    parse_status status;
    std::size_t consumed;  // bytes of `data` that belong to this request
  };
  /// Parses `data`, the bytes that follow what earlier calls consumed. Stops
  /// at the end of one request, so pipelined requests stay in the caller's
  /// buffer. After anything but need_more, call reset() before feeding again.
  result feed(std::string_view data);

  http_request& request() noexcept;
  const http_request& request() const noexcept;
  /// Any byte of this request seen yet (an idle keep-alive connection has none).
  bool started() const noexcept;
  bool headers_complete() const noexcept;
  /// The client sent `Expect: 100-continue` and the headers are complete.
  bool expects_continue() const noexcept;
  /// What the parser objected to (http_parser's errno name), for the 400 message.
  std::string_view error_description() const noexcept;

 private:
  struct state;
  std::unique_ptr<state> state_;
};

}  // namespace cobatch::server
