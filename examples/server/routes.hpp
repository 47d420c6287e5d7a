// routes: what each path answers. Every request is a coroutine here, run by
// its connection; a completion request submits to the engine and waits for
// its tokens while watching for the client to go away (which cancels it).
#pragma once

#include "http_message.hpp"
#include "limits.hpp"
#include "metrics.hpp"
#include "openai_schema.hpp"

#include <asio/awaitable.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

namespace cobatch::server {

class engine_service;
class http_connection;

class routes {
 public:
  routes(engine_service& engine, server_metrics& metrics, const server_limits& limits);

  /// Answers the connection's current request (always, unless the client goes away).
  asio::awaitable<void> handle(http_connection& c);

  /// Completion requests submitted and not yet answered.
  std::size_t in_flight() const noexcept { return in_flight_; }
  std::size_t waiting() const noexcept { return waiting_.waiting(); }
  /// Gives /metrics the number of open connections.
  void set_connection_count(std::function<std::size_t()> f) { open_connections_ = std::move(f); }

 private:
  asio::awaitable<void> completions(http_connection& c);
  http_response simple_answer(const http_connection& c) const;
  std::optional<http_response> admit(const http_connection& c, completion_request& req,
                                     std::vector<std::int32_t>& prompt, waiting_room::slot& slot);

  engine_service& engine_;
  server_metrics& metrics_;
  const server_limits& limits_;
  waiting_room waiting_;
  std::size_t in_flight_ = 0;
  std::uint64_t next_id_ = 1;
  std::function<std::size_t()> open_connections_;
};

}  // namespace cobatch::server
