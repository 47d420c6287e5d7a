#include "engine_service.hpp"

#include "model_factory.hpp"

#include <cobatch/coro/completion_reactor.hpp>
#include <cobatch/coro/run_loop.hpp>
#include <cobatch/engine/step/engine_loop.hpp>
#include <cobatch/gpu/host/host_device.hpp>

#include <asio/experimental/as_tuple.hpp>
#include <asio/use_awaitable.hpp>

#include <algorithm>
#include <exception>
#include <mutex>
#include <thread>

namespace cobatch::server {
namespace {

generation_end end_of(engine::finish_reason r) {
  switch (r) {
    case engine::finish_reason::none: return generation_end::running;
    case engine::finish_reason::length: return generation_end::length;
    case engine::finish_reason::stop: return generation_end::stop;
    case engine::finish_reason::cancelled: return generation_end::cancelled;
    case engine::finish_reason::refused: return generation_end::refused;
    case engine::finish_reason::failed: return generation_end::failed;
  }
  return generation_end::failed;
}

}  // namespace

asio::awaitable<void> generation::wait() {
  if (!pending_.empty() || finished()) co_return;
  auto [ec, chunk] = co_await stream_.async_next(asio::experimental::as_tuple(asio::use_awaitable));
  if (ec == asio::error::eof) {
    // Only after the last chunk, which set end_ already; keep the state sane.
    if (end_ == generation_end::running) end_ = generation_end::failed;
    co_return;
  }
  if (ec) co_return;  // cancelled: nothing new
  pending_.insert(pending_.end(), chunk.tokens.begin(), chunk.tokens.end());
  if (chunk.last()) {
    end_ = end_of(chunk.finish);
    error_ = chunk.detail.empty() ? chunk.error.message() : chunk.detail;
  }
}

// The engine's thread: a coro::run_loop with the completion reactor
// attached (GPU or host-stream completions resume the engine's coroutines
// there), one device per rank, the model's shards and the engine loop.
struct engine_service::impl {
  engine_options options;
  server_metrics& metrics;
  coro::run_loop loop;
  coro::completion_reactor reactor{loop.get_executor()};
  std::vector<std::unique_ptr<gpu::host::host_device>> devices;
  loaded_model model;
  std::vector<engine::engine_rank> ranks;
  std::unique_ptr<engine::engine_loop> engine;
  std::thread thread;
  std::mutex stop_mutex;
  bool stopped = false;
  std::exception_ptr failure;

  impl(engine_options o, server_metrics& m) : options(std::move(o)), metrics(m) {
    loop.attach(reactor);
    std::vector<gpu::device*> raw;
    for (std::int32_t r = 0; r < options.dcp_ranks; ++r) {
      devices.push_back(std::make_unique<gpu::host::host_device>(
          reactor, gpu::host::device_options{"host rank " + std::to_string(r), r, std::size_t{1} << 30}));
      raw.push_back(devices.back().get());
    }
    model = load_model(options, raw);
    if (!options.model_id.empty()) model.card.id = options.model_id;
    for (std::size_t r = 0; r < raw.size(); ++r) ranks.push_back({raw[r], model.ranks[r].get()});

    engine::engine_options eo;
    eo.planner.max_running = options.max_running;
    eo.planner.num_pages = options.kv_pages;
    eo.planner.page_size = options.page_size;
    eo.planner.ubatches = {1, effective_max_ubatches(options)};
    if (options.token_budget > 0) eo.fixed_budget = options.token_budget;
    eo.tuner.min_budget = std::min(options.min_token_budget, eo.tuner.max_budget);
    eo.tuner.target_step_time = options.target_step_time;
    eo.planner.timing.target_step_time = options.target_step_time;
    engine = std::make_unique<engine::engine_loop>(loop.get_executor(), ranks, eo);
    engine->on_step([this](const engine::step_report& report) {
      metrics.step_time.observe(std::chrono::duration<double>(report.outputs.device_time()).count());
    });
    engine->async_run([this](std::exception_ptr e) {
      failure = e;
      loop.stop();
    });
    thread = std::thread([this] { loop.run(); });
  }

  void stop() {
    std::lock_guard lock(stop_mutex);
    if (stopped) return;
    stopped = true;
    engine->stop();
    if (thread.joinable()) thread.join();
  }

  ~impl() {
    stop();
    loop.detach();
  }
};

engine_service::engine_service(engine_options options, server_metrics& metrics)
    : impl_(std::make_unique<impl>(std::move(options), metrics)) {}

engine_service::~engine_service() = default;

const model_card& engine_service::card() const noexcept { return impl_->model.card; }

std::vector<std::int32_t> engine_service::tokenize(std::string_view text) const {
  std::vector<std::int32_t> ids;
  ids.reserve(text.size() + 1);
  if (impl_->model.bos) ids.push_back(*impl_->model.bos);
  for (const char c : text) ids.push_back(static_cast<unsigned char>(c));
  return ids;
}

void engine_service::append_bytes(std::span<const std::int32_t> tokens, std::string& out) const {
  for (const std::int32_t t : tokens) {
    if (t >= 0 && t < 256) out += static_cast<char>(t);
  }
}

std::shared_ptr<generation> engine_service::submit(generation_params p) {
  engine::generation_request r;
  r.prompt = std::move(p.prompt);
  r.max_tokens = p.max_tokens;
  r.sampling = {p.temperature, p.top_p, p.seed};
  r.stop_tokens = std::move(p.stop_tokens);
  if (impl_->model.eos) r.stop_tokens.push_back(*impl_->model.eos);
  return std::make_shared<generation>(impl_->engine->submit(std::move(r)));
}

engine_gauges engine_service::gauges() const {
  const engine::engine_gauges g = impl_->engine->gauges();
  engine_gauges out;
  out.waiting = static_cast<std::size_t>(g.waiting);
  out.running = static_cast<std::size_t>(g.running);
  out.kv_pages_in_use = static_cast<std::size_t>(g.kv_pages_in_use);
  out.kv_pages_total = static_cast<std::size_t>(g.kv_pages_total);
  out.steps = g.steps;
  out.preemptions = g.preemptions;
  return out;
}

void engine_service::stop() { impl_->stop(); }

}  // namespace cobatch::server
