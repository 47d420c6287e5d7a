#include "http_connection.hpp"

#include "http_server.hpp"
#include "openai_schema.hpp"
#include "routes.hpp"

#include <asio/experimental/as_tuple.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <algorithm>
#include <array>
#include <cstdio>

namespace cobatch::server {
namespace {

constexpr auto nothrow = asio::experimental::as_tuple(asio::use_awaitable);
constexpr std::size_t read_chunk = 8 * 1024;
using clock = std::chrono::steady_clock;

request_outcome outcome_of(int status) {
  if (status < 400) return request_outcome::ok;
  if (status == 503) return request_outcome::overloaded;
  if (status >= 500) return request_outcome::failed;
  return request_outcome::bad_request;
}

}  // namespace

http_connection::http_connection(asio::ip::tcp::socket socket, http_server& server, routes& routes)
    : socket_(std::move(socket)),
      server_(server),
      routes_(routes),
      parser_({server.limits().max_header_bytes, server.limits().max_body_bytes}),
      watchdog_timer_(socket_.get_executor()) {
  in_.reserve(read_chunk);
  head_.reserve(256);
}

http_connection::~http_connection() = default;

server_metrics& http_connection::metrics() noexcept { return server_.metrics(); }

asio::awaitable<void> http_connection::run() {
  server_.add(this);
  asio::error_code ignored;
  socket_.set_option(asio::ip::tcp::no_delay(true), ignored);
  set_phase(phase::idle);
  asio::co_spawn(socket_.get_executor(), [self = shared_from_this()] { return self->watchdog(); },
                 asio::detached);
  try {
    co_await serve();
  } catch (const std::exception&) {
    // A route threw (allocation failure, a bug): the client gets a closed
    // connection, the server carries on.
    metrics().count(request_outcome::failed);
  }
  close_socket();
  watchdog_timer_.cancel();
  server_.remove(this);
}

void http_connection::set_phase(phase p) {
  phase_ = p;
  const auto& l = server_.limits();
  const auto now = clock::now();
  switch (p) {
    case phase::idle: deadline_ = now + l.idle_timeout; break;
    case phase::headers: deadline_ = now + l.header_timeout; break;
    case phase::body: deadline_ = now + l.body_timeout; break;
    case phase::handling: break;  // no read deadline
  }
}

// Wakes at a fraction of the shortest timeout and closes the socket if the
// current phase's deadline has passed. Deadlines move with plain stores, so
// the per-request cost is nil; a deadline is enforced within one tick.
asio::awaitable<void> http_connection::watchdog() {
  const auto& l = server_.limits();
  const auto shortest = std::min({l.idle_timeout, l.header_timeout, l.body_timeout});
  const auto tick = std::clamp(shortest / 4, std::chrono::milliseconds(10), std::chrono::milliseconds(1000));
  while (!closed_) {
    watchdog_timer_.expires_after(tick);
    co_await watchdog_timer_.async_wait(nothrow);
    if (closed_) break;
    if (phase_ != phase::handling && clock::now() >= deadline_) {
      timed_out_ = true;
      close_socket();
    }
  }
}

void http_connection::close_socket() {
  if (closed_) return;
  closed_ = true;
  asio::error_code ignored;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
  watchdog_timer_.cancel();
}

void http_connection::begin_shutdown() {
  closing_ = true;
  // Nothing of a request received: nothing in flight to finish.
  if (phase_ == phase::idle && in_begin_ == in_.size()) close_socket();
}

void http_connection::force_close() {
  closing_ = true;
  close_socket();
}

asio::awaitable<void> http_connection::serve() {
  while (!closed_) {
    const bool have_request = co_await read_request();
    if (!have_request) co_return;
    keep_alive_ = parser_.request().keep_alive && !closing_;
    answered_ = false;
    set_phase(phase::handling);
    co_await routes_.handle(*this);
    if (!answered_) {
      // A route that returns without answering is a bug; the client still
      // gets a well-formed answer.
      const http_response r{500, "application/json",
                             error_body({500, "The request was not answered", "server_error", {}, {}}), {}};
      co_await respond(r);
    }
    if (!keep_alive_ || closing_ || closed_) co_return;
    set_phase(phase::idle);
  }
}

// Reads and parses until one whole request is in the parser. Returns false
// (after answering malformed or oversized requests) when the connection must
// close.
asio::awaitable<bool> http_connection::read_request() {
  parser_.reset();
  bool continue_sent = false;
  for (;;) {
    if (in_begin_ < in_.size()) {
      const auto parsed = parser_.feed(std::string_view(in_).substr(in_begin_));
      in_begin_ += parsed.consumed;
      if (phase_ == phase::idle && parser_.started()) set_phase(phase::headers);
      if (phase_ == phase::headers && parser_.headers_complete()) set_phase(phase::body);
      switch (parsed.status) {
        case parse_status::complete: co_return true;
        case parse_status::need_more: break;
        case parse_status::bad_request:
        case parse_status::header_too_large:
        case parse_status::body_too_large: {
          const http_response r = rejection(parsed.status);
          co_await respond(r);
          co_return false;
        }
      }
      if (parser_.expects_continue() && !continue_sent) {
        continue_sent = true;
        static constexpr std::string_view cont = "HTTP/1.1 100 Continue\r\n\r\n";
        auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(cont), nothrow);
        if (ec) co_return false;
      }
    }
    // Everything buffered is parsed: reuse the buffer from its start.
    in_.clear();
    in_begin_ = 0;
    if (closing_ && !parser_.started()) co_return false;
    in_.resize(read_chunk);
    auto [ec, n] = co_await socket_.async_read_some(asio::buffer(in_.data(), in_.size()), nothrow);
    in_.resize(ec ? 0 : n);
    if (ec) {
      if (timed_out_ && parser_.started()) {
        metrics().count(request_outcome::timeout);
      } else if (timed_out_) {
        // An idle keep-alive connection timing out is not a failed request.
      } else if (parser_.started()) {
        metrics().count(request_outcome::cancelled);  // gone mid-request
      }
      co_return false;
    }
  }
}

http_response http_connection::rejection(parse_status why) {
  keep_alive_ = false;  // the rest of the stream cannot be trusted
  int status = 400;
  std::string message;
  switch (why) {
    case parse_status::header_too_large:
      status = 431;
      message = "The request line and headers exceed " + std::to_string(server_.limits().max_header_bytes) + " bytes";
      break;
    case parse_status::body_too_large:
      status = 413;
      message = "The request body exceeds " + std::to_string(server_.limits().max_body_bytes) + " bytes";
      break;
    default:
      message = "Malformed HTTP request: " + std::string(parser_.error_description());
      break;
  }
  return http_response{status, "application/json", error_body({status, std::move(message), "invalid_request_error", {}, {}}), {}};
}

void http_connection::append_head(std::string& out, int status, std::string_view content_type,
                                  const http_response* r, std::size_t content_length, bool chunked) {
  char line[64];
  const auto reason = reason_phrase(status);
  int n = std::snprintf(line, sizeof line, "HTTP/1.1 %d ", status);
  out.append(line, static_cast<std::size_t>(n));
  out += reason;
  out += "\r\nServer: cobatch\r\nContent-Type: ";
  out += content_type;
  if (chunked) {
    out += "\r\nTransfer-Encoding: chunked\r\nCache-Control: no-cache";
  } else {
    n = std::snprintf(line, sizeof line, "\r\nContent-Length: %zu", content_length);
    out.append(line, static_cast<std::size_t>(n));
  }
  out += keep_alive_ && !closing_ ? "\r\nConnection: keep-alive\r\n" : "\r\nConnection: close\r\n";
  if (r != nullptr) {
    for (const auto& [name, value] : r->headers) {
      out += name;
      out += ": ";
      out += value;
      out += "\r\n";
    }
  }
  out += "\r\n";
}

asio::awaitable<bool> http_connection::respond(const http_response& r) {
  answered_ = true;
  metrics().count(outcome_of(r.status));
  if (closed_) co_return false;
  head_.clear();
  append_head(head_, r.status, r.content_type, &r, r.body.size(), false);
  const bool with_body = parser_.request().method != http_method::head;
  std::array<asio::const_buffer, 2> buffers{asio::buffer(head_),
                                             asio::buffer(r.body.data(), with_body ? r.body.size() : 0)};
  auto [ec, n] = co_await asio::async_write(socket_, buffers, nothrow);
  if (ec) {
    close_socket();
    co_return false;
  }
  co_return true;
}

asio::awaitable<bool> http_connection::begin_chunked(std::string_view content_type) {
  answered_ = true;
  if (closed_) co_return false;
  head_.clear();
  append_head(head_, 200, content_type, nullptr, 0, true);
  co_return co_await send(head_);
}

asio::awaitable<bool> http_connection::send(std::string& bytes) {
  if (closed_) co_return false;
  auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(bytes), nothrow);
  bytes.clear();
  if (ec) {
    close_socket();
    co_return false;
  }
  co_return true;
}

asio::awaitable<bool> http_connection::wait_peer_gone() {
  const std::size_t cap = server_.limits().max_header_bytes + server_.limits().max_body_bytes;
  for (;;) {
    if (closed_) co_return true;
    // Cancellation that came while no read was pending would not reach the
    // next one: look before waiting again.
    const auto cs = co_await asio::this_coro::cancellation_state;
    if (cs.cancelled() != asio::cancellation_type::none) co_return false;
    if (in_.size() >= cap) {
      // A client that pipelines more than one request's worth is not read
      // further until this answer is out; wait for cancellation only.
      asio::steady_timer forever(socket_.get_executor(), clock::time_point::max());
      co_await forever.async_wait(nothrow);
      co_return false;
    }
    const std::size_t old = in_.size();
    in_.resize(old + read_chunk);
    auto [ec, n] = co_await socket_.async_read_some(asio::buffer(in_.data() + old, read_chunk), nothrow);
    in_.resize(old + (ec ? 0 : n));
    if (ec == asio::error::operation_aborted && !closed_) co_return false;
    if (ec) co_return true;
  }
}

}  // namespace cobatch::server
