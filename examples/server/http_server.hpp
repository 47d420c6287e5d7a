// http_server: the listening socket, the open connections, and the order of a
// graceful shutdown (stop accepting; idle connections close; busy ones finish
// within the bound, then are closed).
#pragma once

#include "limits.hpp"
#include "metrics.hpp"

#include <asio/awaitable.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>

#include <cstddef>
#include <functional>
#include <string>
#include <unordered_set>

namespace cobatch::server {

class http_connection;
class routes;

class http_server {
 public:
  /// Binds and listens on host:port (port 0: an ephemeral one, see port()).
  /// Throws std::system_error naming the address when it cannot.
  http_server(asio::io_context& io, const std::string& host, unsigned short port,
              server_limits limits, server_metrics& metrics, routes& routes);
  ~http_server();

  /// Starts accepting (on the io_context's thread).
  void start();
  unsigned short port() const;

  /// Stops accepting and drains; `done` runs on the io_context's thread once
  /// every connection has closed, at the latest shutdown_timeout from now.
  void shutdown(std::function<void()> done);
  bool shutting_down() const noexcept { return shutting_down_; }

  const server_limits& limits() const noexcept { return limits_; }
  server_metrics& metrics() noexcept { return metrics_; }
  std::size_t open_connections() const noexcept { return connections_.size(); }

  // Connections register themselves for the duration of run().
  void add(http_connection* c) { connections_.insert(c); }
  void remove(http_connection* c);

 private:
  asio::awaitable<void> accept_loop();
  void refuse(asio::ip::tcp::socket socket);
  void finish_shutdown();

  asio::io_context& io_;
  asio::ip::tcp::acceptor acceptor_;
  server_limits limits_;
  server_metrics& metrics_;
  routes& routes_;
  std::unordered_set<http_connection*> connections_;
  asio::steady_timer shutdown_timer_;
  std::function<void()> on_drained_;
  bool shutting_down_ = false;
};

}  // namespace cobatch::server
