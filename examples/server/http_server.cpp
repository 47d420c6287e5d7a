#include "http_server.hpp"

#include "http_connection.hpp"
#include "openai_schema.hpp"

#include <asio/experimental/as_tuple.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/ip/address.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <memory>
#include <system_error>
#include <vector>

namespace cobatch::server {
namespace {
constexpr auto nothrow = asio::experimental::as_tuple(asio::use_awaitable);
}

http_server::http_server(asio::io_context& io, const std::string& host, unsigned short port,
                         server_limits limits, server_metrics& metrics, routes& routes)
    : io_(io),
      acceptor_(io),
      limits_(limits),
      metrics_(metrics),
      routes_(routes),
      shutdown_timer_(io) {
  asio::error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  if (ec) throw std::system_error(ec, "http_server: host '" + host + "' is not an IP address");
  const asio::ip::tcp::endpoint endpoint(address, port);
  acceptor_.open(endpoint.protocol());
  acceptor_.set_option(asio::ip::tcp::acceptor::reuse_address(true));
  acceptor_.bind(endpoint, ec);
  if (ec) {
    throw std::system_error(ec, "http_server: cannot bind " + host + ":" + std::to_string(port));
  }
  acceptor_.listen(asio::socket_base::max_listen_connections);
}

http_server::~http_server() = default;

unsigned short http_server::port() const { return acceptor_.local_endpoint().port(); }

void http_server::start() { asio::co_spawn(io_, accept_loop(), asio::detached); }

asio::awaitable<void> http_server::accept_loop() {
  while (!shutting_down_) {
    auto [ec, socket] = co_await acceptor_.async_accept(nothrow);
    if (shutting_down_) break;
    if (ec) {
      if (ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor) break;
      // Out of descriptors and the like: back off a little rather than spin.
      asio::steady_timer pause(io_, std::chrono::milliseconds(10));
      co_await pause.async_wait(nothrow);
      continue;
    }
    if (connections_.size() >= limits_.max_connections) {
      refuse(std::move(socket));
      continue;
    }
    auto c = std::make_shared<http_connection>(std::move(socket), *this, routes_);
    // The lambda (and so `c`) lives in the spawned coroutine's frame until
    // run() ends: a member coroutine alone would only hold `this`.
    asio::co_spawn(io_, [c] { return c->run(); }, asio::detached);
  }
}

// One answer to a connection over the limit, without reading its request: the
// client learns why and when to come back, and the slot is not held.
void http_server::refuse(asio::ip::tcp::socket socket) {
  metrics_.count(request_outcome::overloaded);
  struct refusal {
    asio::ip::tcp::socket socket;
    std::string body;
    std::string head;
  };
  auto r = std::make_shared<refusal>(refusal{std::move(socket), {}, {}});
  r->body = error_body({503, "Too many open connections (limit " + std::to_string(limits_.max_connections) + ")",
                        "server_error", {}, "too_many_connections"});
  r->head = "HTTP/1.1 503 Service Unavailable\r\nServer: cobatch\r\n"
            "Content-Type: application/json\r\nContent-Length: " +
            std::to_string(r->body.size()) + "\r\nRetry-After: " + std::to_string(limits_.retry_after_s) +
            "\r\nConnection: close\r\n\r\n";
  std::array<asio::const_buffer, 2> buffers{asio::buffer(r->head), asio::buffer(r->body)};
  asio::async_write(r->socket, buffers, [r](const asio::error_code&, std::size_t) {
    asio::error_code ignored;
    r->socket.shutdown(asio::ip::tcp::socket::shutdown_send, ignored);
    r->socket.close(ignored);
  });
}

void http_server::remove(http_connection* c) {
  connections_.erase(c);
  if (shutting_down_ && connections_.empty()) finish_shutdown();
}

void http_server::shutdown(std::function<void()> done) {
  if (shutting_down_) return;
  shutting_down_ = true;
  on_drained_ = std::move(done);
  asio::error_code ignored;
  acceptor_.close(ignored);
  // begin_shutdown may close a connection, whose coroutine then removes it
  // from the set later; iterate over a copy all the same.
  const std::vector<http_connection*> open(connections_.begin(), connections_.end());
  for (auto* c : open) c->begin_shutdown();
  if (connections_.empty()) {
    finish_shutdown();
    return;
  }
  shutdown_timer_.expires_after(limits_.shutdown_timeout);
  shutdown_timer_.async_wait([this](asio::error_code ec) {
    if (ec) return;
    const std::vector<http_connection*> left(connections_.begin(), connections_.end());
    for (auto* c : left) c->force_close();
  });
}

void http_server::finish_shutdown() {
  shutdown_timer_.cancel();
  if (auto done = std::move(on_drained_)) {
    on_drained_ = nullptr;
    asio::post(io_, std::move(done));
  }
}

}  // namespace cobatch::server
