// http_connection: one client's TCP connection, served by one coroutine that
// reads a request, hands it to the routes (each request is a coroutine of its
// own, awaited in turn), writes the answer and, with keep-alive, goes round
// again. The routes see the connection through the small interface below:
// answer whole, or stream chunks, and notice when the client has gone.
//
// Deadlines: while waiting for a request, the connection may sit idle for
// idle_timeout; from a request's first byte its headers must be complete
// within header_timeout and its body within body_timeout after that. A
// watchdog closes the socket when one passes. While a route handles the
// request no read deadline applies (generation takes what it takes).
#pragma once

#include "http_message.hpp"
#include "limits.hpp"
#include "metrics.hpp"
#include "request_parser.hpp"

#include <asio/awaitable.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

namespace cobatch::server {

class routes;
class http_server;

class http_connection : public std::enable_shared_from_this<http_connection> {
 public:
  http_connection(asio::ip::tcp::socket socket, http_server& server, routes& routes);
  ~http_connection();

  /// Serves requests until the client closes, an error, a timeout, or the
  /// server's shutdown. Never throws. The caller keeps the connection alive
  /// until it completes (co_spawn with a lambda holding the shared_ptr).
  asio::awaitable<void> run();

  // ---- what a route uses ---------------------------------------------------

  const http_request& request() const noexcept { return parser_.request(); }

  /// Writes `r` as the whole answer (no body for HEAD) and counts its outcome.
  /// Returns false when the client is gone. `r` must stay alive until then:
  /// pass a named variable (GCC 12 mishandles class temporaries and by-value
  /// class parameters of coroutines, so none of ours take any).
  asio::awaitable<bool> respond(const http_response& r);

  /// Starts a 200 answer with chunked transfer coding (for SSE). Returns false
  /// when the client is gone.
  asio::awaitable<bool> begin_chunked(std::string_view content_type);
  /// Writes `bytes` (already framed as chunks) and clears it.
  asio::awaitable<bool> send(std::string& bytes);

  /// Completes when the client closes its end or the connection breaks
  /// (true), or when cancelled (false). Bytes the client sends meanwhile (a
  /// pipelined request) are kept for later. Supports terminal cancellation,
  /// so it pairs with work in `asio::experimental::awaitable_operators::||`.
  asio::awaitable<bool> wait_peer_gone();

  /// The server is shutting down: answers carry Connection: close.
  bool closing() const noexcept { return closing_; }
  server_metrics& metrics() noexcept;

  // ---- what the server uses ------------------------------------------------

  /// Shutdown: an idle connection closes now, a busy one after its answer.
  void begin_shutdown();
  /// The shutdown bound passed: close now, whatever is in flight.
  void force_close();

 private:
  enum class phase { idle, headers, body, handling };

  asio::awaitable<void> serve();
  asio::awaitable<bool> read_request();
  http_response rejection(parse_status why);
  asio::awaitable<void> watchdog();
  void set_phase(phase p);
  void append_head(std::string& out, int status, std::string_view content_type,
                   const http_response* r, std::size_t content_length, bool chunked);
  void close_socket();

  asio::ip::tcp::socket socket_;
  http_server& server_;
  routes& routes_;
  request_parser parser_;
  asio::steady_timer watchdog_timer_;
  std::string in_;            // received bytes; in_[in_begin_..] not yet parsed
  std::size_t in_begin_ = 0;
  std::string head_;          // the answer's status line and headers
  phase phase_ = phase::idle;
  std::chrono::steady_clock::time_point deadline_;
  bool answered_ = false;     // this request has its answer (or its head)
  bool keep_alive_ = true;    // after this answer
  bool closing_ = false;
  bool closed_ = false;
  bool timed_out_ = false;
};

}  // namespace cobatch::server
