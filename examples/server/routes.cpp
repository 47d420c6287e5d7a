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
    // Admitted by the engine: its first token (or its end) is here.
    if (!gen->pending().empty() || gen->finished()) slot.release();
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
    if (text.stopped() && !gen->finished()) gen->cancel();
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
    const http_response answer = final_answer();
    co_await c.respond(answer);
  }

  http_response final_answer() {
    if (auto e = engine_error()) return error_response(*e);
    return http_response{200, "application/json",
                         completion_body(id, created, req.model, text.take_rest(), reason(), usage()), {}};
  }

  asio::awaitable<void> stream() {
    // The head waits for the first news, so that a request the engine refuses
    // still gets its proper status code.
    for (;;) {
      absorb();
      if (completion_tokens > 0 || done()) break;
      co_await gen->wait();
    }
    if (engine_error() && completion_tokens == 0) {
      const http_response answer = final_answer();
      co_await c.respond(answer);
      co_return;
    }
    const bool started = co_await c.begin_chunked("text/event-stream");
    if (!started) co_return;
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
        const bool sent = co_await c.send(out);
        if (sent) metrics.count(request_outcome::ok);
        co_return;
      }
      events.take_chunk(out);
      if (!out.empty()) {
        const bool sent = co_await c.send(out);
        if (!sent) co_return;
      }
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
  if (req.path == "/v1/completions" && req.method == http_method::post) {
    co_await completions(c);
    co_return;
  }
  const http_response answer = simple_answer(c);
  co_await c.respond(answer);
}

http_response routes::simple_answer(const http_connection& c) const {
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
    if (!get) return method_not_allowed("GET, HEAD");
    if (c.closing()) {
      return error_response({503, "The server is shutting down", "server_error", {}, "shutting_down"});
    }
    return http_response{200, "application/json", health_body(), {}};
  }
  if (req.path == "/v1/models") {
    if (!get) return method_not_allowed("GET, HEAD");
    return http_response{200, "application/json", models_body(engine_.card()), {}};
  }
  if (req.path == "/metrics") {
    if (!get) return method_not_allowed("GET, HEAD");
    const server_metrics::server_gauges s{open_connections_ ? open_connections_() : 0, waiting_.waiting(),
                                          in_flight_};
    return http_response{200, "text/plain; version=0.0.4; charset=utf-8", metrics_.render(s, engine_.gauges()),
                         {}};
  }
  if (req.path == "/v1/completions") return method_not_allowed("POST");
  return error_response({404, "No route for " + req.method_name + " " + req.path, "invalid_request_error", {},
                         "not_found"});
}

// Parses and checks a completion request; on success `prompt` holds its
// tokens and the waiting-room slot is taken, else the answer is the refusal.
std::optional<http_response> routes::admit(const http_connection& c, completion_request& req,
                                           std::vector<std::int32_t>& prompt, waiting_room::slot& slot) {
  const model_card& card = engine_.card();
  auto parsed = parse_completion_request(c.request().body, card);
  if (auto* e = std::get_if<api_error>(&parsed)) return error_response(*e);
  req = std::move(std::get<completion_request>(parsed));
  prompt = req.prompt_tokens ? std::move(*req.prompt_tokens) : engine_.tokenize(req.prompt_text);
  if (prompt.empty()) {
    return error_response({400, "'prompt' must not be empty", "invalid_request_error", "prompt", {}});
  }
  if (prompt.size() + static_cast<std::size_t>(req.max_tokens) > card.context_length) {
    return error_response(
        {400,
         "This model's maximum context length is " + std::to_string(card.context_length) +
             " tokens; the prompt has " + std::to_string(prompt.size()) + " and 'max_tokens' asks for " +
             std::to_string(req.max_tokens),
         "invalid_request_error", "max_tokens", "context_length_exceeded"});
  }
  if (c.closing()) {
    return error_response({503, "The server is shutting down", "server_error", {}, "shutting_down"});
  }
  slot = waiting_.try_enter();
  if (!slot) {
    http_response r = error_response({503,
                                      "The waiting queue is full (" + std::to_string(waiting_.capacity()) +
                                          " requests); retry later",
                                      "server_error", {}, "queue_full"});
    r.headers.emplace_back("Retry-After", std::to_string(limits_.retry_after_s));
    return r;
  }
  return std::nullopt;
}

asio::awaitable<void> routes::completions(http_connection& c) {
  const auto arrival = clock::now();
  completion_request req;
  std::vector<std::int32_t> prompt;
  waiting_room::slot slot;
  const std::optional<http_response> refusal = admit(c, req, prompt, slot);
  if (refusal) {
    co_await c.respond(*refusal);
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
      if (!job.gen->finished()) job.gen->cancel();
    }
  } on_exit{job, in_flight_};

  // The answer races the client's departure; whichever ends first cancels
  // the other (terminal cancellation), and the group waits for both.
  // (The group and its operations are named locals, not temporaries of the
  // co_await expression, which GCC 12 mishandles.)
  const auto ex = co_await asio::this_coro::executor;
  auto group = asio::experimental::make_parallel_group(
      asio::co_spawn(ex, job.req.stream ? job.stream() : job.collect(), asio::experimental::deferred),
      asio::co_spawn(ex, c.wait_peer_gone(), asio::experimental::deferred));
  auto both = std::move(group).async_wait(asio::experimental::wait_for_one(), asio::use_awaitable);
  const auto result = co_await std::move(both);
  const auto& order = std::get<0>(result);
  if (order[0] == 0 && std::get<1>(result)) std::rethrow_exception(std::get<1>(result));
  if (order[0] == 1 && std::get<3>(result)) metrics_.count(request_outcome::cancelled);
}

}  // namespace cobatch::server
