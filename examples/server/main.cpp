// cobatch_server: an OpenAI-compatible completions server on cobatch's engine.
// One thread serves HTTP (every request a coroutine on it), one runs the
// engine loop; see docs/server.md for a request's path between them.
#include "engine_service.hpp"
#include "http_server.hpp"
#include "metrics.hpp"
#include "routes.hpp"
#include "server_options.hpp"

#include <asio/io_context.hpp>
#include <asio/signal_set.hpp>

#include <csignal>
#include <cstdio>
#include <exception>

using namespace cobatch::server;

int main(int argc, char** argv) {
  server_options options;
  try {
    options = parse_server_options(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cobatch_server: %s\n", e.what());
    return 2;
  }
  if (options.help) {
    std::fputs(server_usage(argv[0]).c_str(), stdout);
    return 0;
  }
  try {
    asio::io_context io(1);
    server_metrics metrics;
    engine_service engine(options.engine, metrics);
    routes r(engine, metrics, options.limits);
    http_server server(io, options.host, options.port, options.limits, metrics, r);
    r.set_connection_count([&server] { return server.open_connections(); });

    asio::signal_set signals(io, SIGINT, SIGTERM);
    signals.async_wait([&](const asio::error_code& ec, int signal) {
      if (ec) return;
      std::fprintf(stderr, "cobatch_server: %s: draining (at most %lld ms)\n",
                   signal == SIGINT ? "SIGINT" : "SIGTERM",
                   static_cast<long long>(options.limits.shutdown_timeout.count()));
      server.shutdown([&] {
        engine.stop();
        io.stop();
      });
    });
    server.start();
    const auto& card = engine.card();
    // The test harness and ./scripts/demo read the port from this line.
    std::printf("cobatch_server: listening on http://%s:%u model=%s vocab=%zu context=%zu\n",
                options.host.c_str(), static_cast<unsigned>(server.port()), card.id.c_str(),
                card.vocab_size, card.context_length);
    std::fflush(stdout);
    io.run();
    engine.stop();
    std::fprintf(stderr, "cobatch_server: stopped\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cobatch_server: %s\n", e.what());
    return 1;
  }
  return 0;
}
