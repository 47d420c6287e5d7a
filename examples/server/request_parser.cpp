#include "request_parser.hpp"

#include <http_parser.h>

#include <string>

namespace cobatch::server {

struct request_parser::state {
  parser_limits limits;
  http_parser parser{};
  http_parser_settings settings{};
  http_request request;
  std::string url;
  std::size_t header_bytes = 0;
  bool started = false;
  bool in_header_value = false;
  bool headers_complete = false;
  bool message_complete = false;
  bool header_too_large = false;
  bool body_too_large = false;
  bool expects_continue = false;
  bool bad_version = false;

  static state& of(http_parser* p) { return *static_cast<state*>(p->data); }

  // Counts request-line and header bytes as they arrive, so a client cannot
  // make the server buffer more than the limit before it objects.
  bool charge_header(std::size_t n) {
    header_bytes += n;
    if (header_bytes > limits.max_header_bytes) {
      header_too_large = true;
      return false;
    }
    return true;
  }

  explicit state(parser_limits l) : limits(l) {
    settings.on_message_begin = [](http_parser* p) {
      of(p).started = true;
      return 0;
    };
    settings.on_url = [](http_parser* p, const char* at, std::size_t n) {
      auto& s = of(p);
      if (!s.charge_header(n)) return -1;
      s.url.append(at, n);
      return 0;
    };
    settings.on_header_field = [](http_parser* p, const char* at, std::size_t n) {
      auto& s = of(p);
      if (!s.charge_header(n + 4)) return -1;  // ": " and CRLF
      if (s.request.headers.empty() || s.in_header_value) {
        s.request.headers.emplace_back();
        s.in_header_value = false;
      }
      s.request.headers.back().name.append(at, n);
      return 0;
    };
    settings.on_header_value = [](http_parser* p, const char* at, std::size_t n) {
      auto& s = of(p);
      if (!s.charge_header(n)) return -1;
      s.in_header_value = true;
      if (s.request.headers.empty()) s.request.headers.emplace_back();
      s.request.headers.back().value.append(at, n);
      return 0;
    };
    settings.on_headers_complete = [](http_parser* p) {
      auto& s = of(p);
      s.headers_complete = true;
      // A declared body over the limit is refused before a byte of it is read.
      if ((p->flags & F_CONTENTLENGTH) != 0 && p->content_length > s.limits.max_body_bytes) {
        s.body_too_large = true;
        return -1;
      }
      // http_parser takes any one-digit version; this server speaks 1.0 and 1.1.
      if (p->http_major != 1 || p->http_minor > 1) {
        s.bad_version = true;
        return -1;
      }
      s.finish_head(p);
      return 0;
    };
    settings.on_body = [](http_parser* p, const char* at, std::size_t n) {
      auto& s = of(p);
      // Chunked bodies declare no length; count them as they come.
      if (s.request.body.size() + n > s.limits.max_body_bytes) {
        s.body_too_large = true;
        return -1;
      }
      s.request.body.append(at, n);
      return 0;
    };
    settings.on_message_complete = [](http_parser* p) {
      auto& s = of(p);
      s.message_complete = true;
      s.request.keep_alive = http_should_keep_alive(p) != 0;
      // Stop here: the next pipelined request stays in the caller's buffer.
      http_parser_pause(p, 1);
      return 0;
    };
    reset();
  }

  void finish_head(http_parser* p) {
    switch (static_cast<enum ::http_method>(p->method)) {
      case HTTP_GET: request.method = http_method::get; break;
      case HTTP_HEAD: request.method = http_method::head; break;
      case HTTP_POST: request.method = http_method::post; break;
      default: request.method = http_method::other; break;
    }
    request.method_name = http_method_str(static_cast<enum ::http_method>(p->method));
    http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(url.data(), url.size(), 0, &u) == 0) {
      if ((u.field_set & (1 << UF_PATH)) != 0) {
        request.path = url.substr(u.field_data[UF_PATH].off, u.field_data[UF_PATH].len);
      }
      if ((u.field_set & (1 << UF_QUERY)) != 0) {
        request.query = url.substr(u.field_data[UF_QUERY].off, u.field_data[UF_QUERY].len);
      }
    }
    if (request.path.empty()) request.path.assign(1, '/');
    request.keep_alive = http_should_keep_alive(p) != 0;
    if (p->http_major == 1 && p->http_minor == 1) {
      for (const auto& h : request.headers) {
        if (iequals(h.name, "expect") && iequals(h.value, "100-continue")) expects_continue = true;
      }
    }
  }

  void reset() {
    http_parser_init(&parser, HTTP_REQUEST);
    parser.data = this;
    // Cleared, not replaced: a keep-alive connection reuses the capacity.
    request.method = http_method::other;
    request.method_name.clear();
    request.path.clear();
    request.query.clear();
    request.headers.clear();
    request.body.clear();
    request.keep_alive = true;
    url.clear();
    header_bytes = 0;
    started = in_header_value = headers_complete = message_complete = false;
    header_too_large = body_too_large = expects_continue = bad_version = false;
  }
};

request_parser::request_parser(parser_limits limits) : state_(std::make_unique<state>(limits)) {}
request_parser::~request_parser() = default;

void request_parser::reset() { state_->reset(); }

request_parser::result request_parser::feed(std::string_view data) {
  auto& s = *state_;
  const std::size_t n = http_parser_execute(&s.parser, &s.settings, data.data(), data.size());
  if (s.message_complete) return {parse_status::complete, n};
  if (s.header_too_large) return {parse_status::header_too_large, n};
  if (s.body_too_large) return {parse_status::body_too_large, n};
  const auto err = HTTP_PARSER_ERRNO(&s.parser);
  if (err == HPE_HEADER_OVERFLOW) return {parse_status::header_too_large, n};
  if (err != HPE_OK) return {parse_status::bad_request, n};
  return {parse_status::need_more, n};
}

http_request& request_parser::request() noexcept { return state_->request; }
const http_request& request_parser::request() const noexcept { return state_->request; }
bool request_parser::started() const noexcept { return state_->started; }
bool request_parser::headers_complete() const noexcept { return state_->headers_complete; }
bool request_parser::expects_continue() const noexcept { return state_->expects_continue; }

std::string_view request_parser::error_description() const noexcept {
  if (state_->bad_version) return "unsupported HTTP version (this server speaks HTTP/1.0 and HTTP/1.1)";
  return http_errno_description(HTTP_PARSER_ERRNO(&state_->parser));
}

}  // namespace cobatch::server
