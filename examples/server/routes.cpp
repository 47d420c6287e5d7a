#include "routes.hpp"

#include "engine_service.hpp"
#include "http_connection.hpp"
#include "openai_schema.hpp"
#include "sse.hpp"
#include "text_stream.hpp"

#include <asio/co_spawn.hpp>
#include <asio/experimental/deferred.hpp>
#include <asio/experimental/parallel_group.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <cstdio>
#include <random>
#include <variant>

namespace cobatch::server {
namespace {

using clock = std::chrono::steady_clock;

http_response error_response(const api_error& e) {
  return http_response{e.status, "application/json", error_body(e), {}};
}

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double seconds(clock::duration d) { return std::chrono::duration<double>(d).count(); }

// One completion request from submission to its last byte. Lives on the
// handler's coroutine frame; run() is what races the client's departure.
struct completion_job {
  http_connection& c;
  engine_service& engine;
  server_metrics& metrics;
  std::shared_ptr<generation> gen;
  waiting_room::slot slot;
  completion_request req;
  std::size_t prompt_tokens;
  std::string id;
  std::int64_t created;
  clock::time_point arrival;
  clock::time_point last_token{};
  text_stream text;
  std::string bytes;  // scratch: the bytes of newly arrived tokens
  std::size_t completion_tokens = 0;
  bool client_gone = false;

  completion_usage usage() const { return {prompt_tokens, completion_tokens}; }

  // Takes what the engine delivered: latency figures, the waiting-room slot
  // (given back at admission), and the bytes into the text stream. A stop
  // sequence ends the generation here and cancels the rest in the engine.
  void absorb() {
    if (gen->admitted() || !gen->pending().empty() || gen->finished()) slot.release();
    const auto tokens = gen->pending();
    if (!tokens.empty() && !text.stopped()) {
      const auto now = clock::now();
      if (completion_tokens == 0) {
        metrics.time_to_first_token.observe(seconds(now - arrival));
      } else {
        const double per = seconds(now - last_token) / static_cast<double>(tokens.size());
        for (std::size_t i = 0; i < tokens.size(); ++i) metrics.time_per_output_token.observe(per);
      }
      last_token = now;
      metrics.tokens_generated(tokens.size(), now);
      // Token by token, so that the count stops where a stop sequence appears.
      for (const std::int32_t t : tokens) {
        bytes.clear();
        engine.append_bytes(std::span<const std::int32_t>(&t, 1), bytes);
        ++completion_tokens;
        if (text.append(bytes)) break;
      }
    }
    gen->clear_pending();
    if (text.stopped() && !gen->finished()) engine.cancel(*gen);
  }

  bool done() const { return gen->finished() || text.stopped(); }

  finish_reason reason() const {
    if (text.stopped() || gen->end() == generation_end::stop) return finish_reason::stop;
    return finish_reason::length;
  }

  // The engine refused or failed the request; nothing was sent yet.
  std::optional<api_error> engine_error() const {
    if (text.stopped()) return std::nullopt;
    if (gen->end() == generation_end::refused) {
      return api_error{400, "The engine refused the request: " + gen->error(), "invalid_request_error",
                       "prompt", {}};
    }
    if (gen->end() == generation_end::failed) {
      return api_error{500, "The engine failed the request: " + gen->error(), "server_error", {}, {}};
    }
    if (gen->end() == generation_end::cancelled) {
      return api_error{503, "The server is shutting down", "server_error", {}, "shutting_down"};
    }
    return std::nullopt;
  }

  asio::awaitable<void> collect() {
    for (;;) {
      absorb();
      if (done()) break;
      co_await gen->wait();
    }
    if (auto e = engine_error()) {
      co_await c.respond(error_response(*e));
      co_return;
    }
    std::string body = completion_body(id, created, req.model, text.take_rest(), reason(), usage());
    co_await c.respond(http_response{200, "application/json", std::move(body), {}});
  }

  asio::awaitable<void> stream() {
    // The head waits for the first news, so that a request the engine refuses
    // still gets its proper status code.
    for (;;) {
      absorb();
      if (completion_tokens > 0 || done()) break;
      co_await gen->wait();
    }
    if (auto e = engine_error(); e && completion_tokens == 0) {
      co_await c.respond(error_response(*e));
      co_return;
    }
    if (!co_await c.begin_chunked("text/event-stream")) co_return;
    sse_batch events;
    std::string out;
    for (;;) {
      const bool finished = done();
      std::string ready = finished ? text.take_rest() : text.take_ready();
      if (!ready.empty() || finished) {
        std::optional<finish_reason> r;
        if (finished && !engine_error()) r = reason();
        if (!ready.empty() || r) events.add(completion_chunk(id, created, req.model, ready, r));
      }
      if (finished) {
        if (auto e = engine_error()) {
          // Mid-stream failure: OpenAI's clients raise on an error event.
          events.add(error_body(*e));
        } else {
          if (req.include_usage) events.add(usage_chunk(id, created, req.model, usage()));
          events.add_done();
        }
        events.take_chunk(out);
        out += last_chunk;
        if (co_await c.send(out)) metrics.count(request_outcome::ok);
        co_return;
      }
      events.take_chunk(out);
      if (!out.empty() && !co_await c.send(out)) co_return;
      co_await gen->wait();
      absorb();
    }
  }
};

}  // namespace

routes::routes(engine_service& engine, server_metrics& metrics, const server_limits& limits)
    : engine_(engine), metrics_(metrics), limits_(limits), waiting_(limits.max_waiting) {}

asio::awaitable<void> routes::handle(http_connection& c) {
  const http_request& req = c.request();
  const auto method_not_allowed = [&](std::string allow) {
    http_response r = error_response({405, "Method " + req.method_name + " is not allowed on " + req.path +
                                               "; use " + allow,
                                      "invalid_request_error", {}, "method_not_allowed"});
    r.headers.emplace_back("Allow", std::move(allow));
    return r;
  };
  const bool get = req.method == http_method::get || req.method == http_method::head;

  if (req.path == "/health") {
    if (!get) {
      co_await c.respond(method_not_allowed("GET, HEAD"));
    } else if (c.closing()) {
      co_await c.respond(error_response({503, "The server is shutting down", "server_error", {}, "shutting_down"}));
    } else {
      co_await c.respond(http_response{200, "application/json", health_body(), {}});
    }
  } else if (req.path == "/v1/models") {
    if (!get) {
      co_await c.respond(method_not_allowed("GET, HEAD"));
    } else {
      co_await c.respond(http_response{200, "application/json", models_body(engine_.card()), {}});
    }
  } else if (req.path == "/metrics") {
    if (!get) {
      co_await c.respond(method_not_allowed("GET, HEAD"));
    } else {
      server_metrics::server_gauges s{open_connections_ ? open_connections_() : 0, waiting_.waiting(), in_flight_};
      co_await c.respond(http_response{200, "text/plain; version=0.0.4; charset=utf-8",
                                       metrics_.render(s, engine_.gauges()), {}});
    }
  } else if (req.path == "/v1/completions") {
    if (req.method != http_method::post) {
      co_await c.respond(method_not_allowed("POST"));
    } else {
      co_await completions(c);
    }
  } else {
    co_await c.respond(error_response({404, "No route for " + req.method_name + " " + req.path,
                                       "invalid_request_error", {}, "not_found"}));
  }
}

asio::awaitable<void> routes::completions(http_connection& c) {
  const auto arrival = clock::now();
  const model_card& card = engine_.card();
  auto parsed = parse_completion_request(c.request().body, card);
  if (auto* e = std::get_if<api_error>(&parsed)) {
    co_await c.respond(error_response(*e));
    co_return;
  }
  auto& req = std::get<completion_request>(parsed);
  std::vector<std::int32_t> prompt = req.prompt_tokens ? std::move(*req.prompt_tokens)
                                                        : engine_.tokenize(req.prompt_text);
  if (prompt.empty()) {
    co_await c.respond(error_response({400, "'prompt' must not be empty", "invalid_request_error", "prompt", {}}));
    co_return;
  }
  if (prompt.size() + static_cast<std::size_t>(req.max_tokens) > card.context_length) {
    co_await c.respond(error_response(
        {400,
         "This model's maximum context length is " + std::to_string(card.context_length) +
             " tokens; the prompt has " + std::to_string(prompt.size()) + " and 'max_tokens' asks for " +
             std::to_string(req.max_tokens),
         "invalid_request_error", "max_tokens", "context_length_exceeded"}));
    co_return;
  }
  if (c.closing()) {
    co_await c.respond(error_response({503, "The server is shutting down", "server_error", {}, "shutting_down"}));
    co_return;
  }
  auto slot = waiting_.try_enter();
  if (!slot) {
    http_response r = error_response({503,
                                      "The waiting queue is full (" + std::to_string(waiting_.capacity()) +
                                          " requests); retry later",
                                      "server_error", {}, "queue_full"});
    r.headers.emplace_back("Retry-After", std::to_string(limits_.retry_after_s));
    co_await c.respond(std::move(r));
    co_return;
  }

  generation_params p;
  p.prompt = std::move(prompt);
  p.max_tokens = req.max_tokens;
  p.temperature = static_cast<float>(req.temperature);
  p.top_p = static_cast<float>(req.top_p);
  // Without a seed, a fresh one: two unseeded requests should differ.
  p.seed = req.seed ? *req.seed : std::random_device{}() * 0x9E3779B97F4A7C15ULL ^ next_id_;
  const std::size_t prompt_tokens = p.prompt.size();

  char id[32];
  std::snprintf(id, sizeof id, "cmpl-%016llx", static_cast<unsigned long long>(next_id_++));
  auto stop = req.stop;
  completion_job job{c,      engine_,       metrics_,      engine_.submit(std::move(p)),
                     std::move(slot), std::move(req), prompt_tokens, id,
                     unix_now(), arrival, {}, text_stream(std::move(stop)), {}, 0, false};
  ++in_flight_;
  struct leave {
    completion_job& job;
    std::size_t& in_flight;
    ~leave() {
      --in_flight;
      // Gone client, shutdown, stop sequence: the engine frees the pages at
      // its next step.
      if (!job.gen->finished()) job.engine.cancel(*job.gen);
    }
  } on_exit{job, in_flight_};

  // The answer races the client's departure; whichever ends first cancels
  // the other (terminal cancellation), and the group waits for both.
  const auto ex = co_await asio::this_coro::executor;
  auto [order, work_error, watch_error, gone] =
      co_await asio::experimental::make_parallel_group(
          asio::co_spawn(ex, job.req.stream ? job.stream() : job.collect(), asio::experimental::deferred),
          asio::co_spawn(ex, c.wait_peer_gone(), asio::experimental::deferred))
          .async_wait(asio::experimental::wait_for_one(), asio::use_awaitable);
  if (order[0] == 0 && work_error) std::rethrow_exception(work_error);
  if (order[0] == 1 && gone) metrics_.count(request_outcome::cancelled);
}

}  // namespace cobatch::server
