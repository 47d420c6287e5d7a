#include "cobatch/engine/step/engine_loop.hpp"

#include "cobatch/coro/async_event.hpp"
#include "cobatch/coro/use_task.hpp"
#include "cobatch/engine/dispatch/capture_ladder.hpp"
#include "cobatch/engine/ubatch/ubatch_error.hpp"

#include "message.hpp"

#include <algorithm>
#include <exception>

#include <time.h>

namespace cobatch::engine {

namespace {
using clock = std::chrono::steady_clock;

// CPU time of the calling thread: what the loop spends, not what it waits.
std::chrono::nanoseconds thread_cpu() noexcept {
#if defined(__linux__)
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
#else
  return clock::now().time_since_epoch();
#endif
}

std::string describe(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "unknown exception";
  }
}

planner_options resolve(planner_options p, std::span<const engine_rank> ranks) {
  const model_info info = ranks[0].model->info();
  if (p.limits.max_context == 0) p.limits.max_context = info.max_context;
  if (p.limits.vocab_size == 0) p.limits.vocab_size = info.vocab_size;
  p.dcp_world = static_cast<std::int32_t>(ranks.size());
  if (p.activations.activation_bytes_per_token == 0 && info.activation_bytes_per_token > 0) {
    p.activations.free_bytes = ranks[0].device->memory().free;
    p.activations.activation_bytes_per_token = info.activation_bytes_per_token;
  }
  return p;
}

std::span<const engine_rank> checked(std::span<const engine_rank> ranks) {
  if (ranks.empty()) throw_engine_error(errc::invalid_argument, "engine_loop: no ranks");
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    if (ranks[i].device == nullptr || ranks[i].model == nullptr)
      throw_engine_error(errc::invalid_argument, detail::cat("engine_loop: rank ", i, " has no device or no model"));
  }
  return ranks;
}
}  // namespace

engine_loop::engine_loop(asio::any_io_executor executor, std::span<const engine_rank> ranks, engine_options options)
    : executor_(std::move(executor)),
      options_(std::move(options)),
      ranks_(checked(ranks).begin(), ranks.end()),
      tuner_(options_.tuner) {
  if (options_.fixed_budget && *options_.fixed_budget < 1)
    throw_engine_error(errc::invalid_argument,
                       detail::cat("engine_loop: fixed_budget ", *options_.fixed_budget, " < 1; a step needs a token"));
  const planner_options popts = resolve(options_.planner, ranks_);
  const std::int32_t max_budget = options_.fixed_budget ? *options_.fixed_budget : options_.tuner.max_budget;
  const std::uint32_t ladder_top =
      std::max<std::uint32_t>(1, std::min<std::uint32_t>(options_.graph_max_tokens > 0 ? options_.graph_max_tokens : 1,
                                                         static_cast<std::uint32_t>(max_budget)));
  dispatch_router router(capture_ladder::standard(ladder_top));
  const auto stages = ranks_[0].model->stages();
  const bool whole = stages.size() == 1 && stages[0] == stage_kind::graph;
  if (options_.graph_max_tokens > 0) {
    // One graph stage is the whole forward pass (full); anything else is
    // pieces between eager stages and collectives (piecewise).
    const dispatch_mode mode = whole ? dispatch_mode::full : dispatch_mode::piecewise;
    for (std::uint32_t rung : router.ladder().sizes()) router.declare(mode, dispatch_key::for_tokens(rung));
  }
  planner_ = std::make_unique<step_planner>(popts, std::move(router));
  runner_options ropts;
  ropts.max_tokens = std::max<std::int32_t>(max_budget, static_cast<std::int32_t>(planner_->router().ladder().max_size()));
  ropts.max_reqs = popts.max_running;
  ropts.max_pages = popts.num_pages;
  ropts.max_ubatches = popts.ubatches.max;
  ropts.keep_logits = options_.keep_logits;
  ropts.dcp_world = popts.dcp_world;
  for (std::size_t i = 0; i < ranks_.size(); ++i) {
    ropts.dcp_rank = static_cast<std::int32_t>(i);
    runners_.push_back(std::make_unique<step_runner>(executor_, *ranks_[i].device, *ranks_[i].model, ropts));
  }
  wake_ = std::make_unique<coro::async_event>(executor_);
  publish_gauges();
}

engine_loop::~engine_loop() = default;

request_stream engine_loop::submit(generation_request request) {
  const request_id id = next_id_.fetch_add(1, std::memory_order_relaxed);
  auto channel = std::make_shared<detail::request_channel>(id, executor_);
  request_stream stream(channel, [this](request_id r) { cancel(r); });
  {
    std::lock_guard lock(mutex_);
    if (stopping_) {
      channel->push({}, finish_reason::cancelled, make_error_code(errc::invalid_argument), "engine_loop: stopped");
      return stream;
    }
    commands_.push_back({command::kind::submit, id, std::move(request), std::move(channel)});
  }
  wake_->set();
  return stream;
}

void engine_loop::cancel(request_id id) {
  {
    std::lock_guard lock(mutex_);
    commands_.push_back({command::kind::cancel, id, {}, {}});
  }
  wake_->set();
}

void engine_loop::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_->set();
}

engine_gauges engine_loop::gauges() const {
  std::lock_guard lock(mutex_);
  return gauges_;
}

std::string engine_loop::last_error() const {
  std::lock_guard lock(mutex_);
  return last_error_;
}

void engine_loop::set_timeline(timeline* trace) { runners_[0]->set_timeline(trace); }

void engine_loop::drain_commands() {
  taken_.clear();
  {
    std::lock_guard lock(mutex_);
    taken_.swap(commands_);
  }
  for (command& c : taken_) {
    if (c.what == command::kind::submit) {
      channels_.emplace(c.id, c.channel);
      planner_->add(c.id, std::move(c.request), updates_);
    } else {
      planner_->cancel(c.id);
    }
  }
  taken_.clear();
  deliver(updates_);
}

void engine_loop::deliver(step_updates& updates) {
  std::uint64_t tokens = 0, finished = 0, refused = 0;
  for (const request_update& u : updates.updates) {
    auto it = channels_.find(u.id);
    if (it == channels_.end()) continue;
    const std::span<const std::int32_t> t(updates.tokens.data() + u.first_token, static_cast<std::size_t>(u.token_count));
    it->second->push(t, u.finish, u.error, u.detail);
    tokens += static_cast<std::uint64_t>(u.token_count);
    if (u.finish != finish_reason::none) {
      ++finished;
      if (u.finish == finish_reason::refused) ++refused;
      channels_.erase(it);
    }
  }
  updates.clear();
  std::lock_guard lock(mutex_);
  gauges_.tokens_generated += tokens;
  gauges_.finished += finished;
  gauges_.refused += refused;
}

void engine_loop::publish_gauges() {
  const planner_gauges p = planner_->gauges();
  std::lock_guard lock(mutex_);
  gauges_.waiting = p.waiting;
  gauges_.running = p.running;
  gauges_.kv_pages_in_use = p.pages_in_use;
  gauges_.kv_pages_total = p.pages_total;
  gauges_.preemptions = p.preemptions;
}

coro::task<bool> engine_loop::launch(step_plan& plan, in_flight& f) {
  f.plan = &plan;
  f.tickets.assign(runners_.size(), step_ticket{});
  std::exception_ptr error;
  std::size_t rank = 0;
  for (; rank < runners_.size(); ++rank) {
    try {
      f.tickets[rank] = co_await runners_[rank]->launch(plan);
    } catch (...) {
      error = std::current_exception();
      break;
    }
  }
  if (!error) co_return true;
  f.tickets.clear();
  last_failure_ = detail::cat("step ", plan.step, " on rank ", rank, ": ", describe(error));
  co_return false;
}

coro::task<bool> engine_loop::collect(in_flight& f) {
  std::exception_ptr error;
  std::size_t rank = 0;
  step_outputs first;
  std::string mismatch;
  for (; rank < runners_.size(); ++rank) {
    try {
      step_outputs out = co_await runners_[rank]->collect(f.tickets[rank]);
      if (rank == 0) {
        first = out;
      } else if (!std::equal(out.sampled.begin(), out.sampled.end(), first.sampled.begin(), first.sampled.end())) {
        mismatch = detail::cat("rank ", rank, " sampled other tokens than rank 0");
      }
    } catch (...) {
      error = std::current_exception();
      break;
    }
  }
  if (error || !mismatch.empty()) {
    last_failure_ = error ? describe(error) : detail::cat("step ", f.plan->step, ": ", mismatch);
    co_return false;
  }
  const auto cpu0 = thread_cpu();
  const step_plan& plan = *f.plan;
  planner_->commit(plan, first.sampled, updates_);
  deliver(updates_);
  const auto device = first.device_time();
  if (device.count() > 0) {
    tuner_.record(plan.phase, plan.token_budget, plan.num_tokens, device);
    planner_->record_timing({plan.phase, plan.num_tokens, device, plan.ubatches.size()});
  }
  step_report report;
  report.plan = &plan;
  report.outputs = first;
  report.host_plan = f.host_plan;
  report.host_launch = f.host_launch;
  report.host_cpu = f.host_cpu + (thread_cpu() - cpu0);
  if (last_device_end_ != clock::time_point{} && first.device_begin > last_device_end_)
    report.device_gap = first.device_begin - last_device_end_;
  last_device_end_ = first.device_end;
  {
    std::lock_guard lock(mutex_);
    ++gauges_.steps;
    gauges_.token_budget = plan.token_budget;
    gauges_.last_step_device_us = std::chrono::duration<double, std::micro>(device).count();
    gauges_.last_step_host_us = std::chrono::duration<double, std::micro>(f.host_plan + f.host_launch).count();
  }
  if (observer_) observer_(report);
  f.plan = nullptr;
  co_return true;
}

coro::task<void> engine_loop::recover(in_flight* older, in_flight* newer) {
  {
    std::lock_guard lock(mutex_);
    ++gauges_.failed_steps;
    last_error_ = last_failure_;
  }
  for (auto& r : runners_) co_await r->recover();
  last_device_end_ = {};
  const std::error_code ec = make_error_code(errc::ubatch_failed);
  for (in_flight* f : {older, newer}) {
    if (f != nullptr && f->plan != nullptr) {
      planner_->fail(*f->plan, ec, last_failure_, updates_);
      f->plan = nullptr;
    }
  }
  deliver(updates_);
}

coro::task<void> engine_loop::run() {
  std::array<in_flight, 2> flights;
  in_flight* prev = nullptr;
  while (true) {
    drain_commands();
    {
      std::lock_guard lock(mutex_);
      if (stopping_) break;
    }
    const std::size_t cursor = plan_cursor_ % 2;
    step_plan& plan = plans_[cursor];
    in_flight& f = flights[cursor];
    bool launched = false;
    if (planner_->live() > 0) {
      const auto cpu0 = thread_cpu();
      const auto t0 = clock::now();
      const step_phase phase = planner_->gauges().waiting > 0 ? step_phase::prefill : step_phase::decode;
      const std::int32_t budget = options_.fixed_budget ? *options_.fixed_budget : tuner_.budget(phase);
      planner_->plan(budget, plan, updates_);
      deliver(updates_);
      const auto t1 = clock::now();
      f.host_plan = t1 - t0;
      if (!plan.empty()) {
        ++plan_cursor_;
        launched = co_await launch(plan, f);
        f.host_launch = clock::now() - t1;
        f.host_cpu = thread_cpu() - cpu0;
        if (!launched) {
          co_await recover(prev, &f);
          prev = nullptr;
          publish_gauges();
          continue;
        }
      }
    }
    const bool collected = prev != nullptr;
    if (prev != nullptr) {
      const bool ok = co_await collect(*prev);
      if (!ok) {
        co_await recover(prev, launched ? &f : nullptr);
        prev = nullptr;
        publish_gauges();
        continue;
      }
      prev = nullptr;
    }
    if (launched) {
      if (options_.overlap == step_overlap::overlapped) {
        prev = &f;
      } else if (!co_await collect(f)) {
        co_await recover(&f, nullptr);
      }
    }
    publish_gauges();
    if (collected && !launched) continue;  // what it finished may let others run
    if (!launched && prev == nullptr && planner_->live() > 0) {
      // Nothing in flight and nothing planned while requests wait: only a
      // planner bug gets here; say so instead of sleeping forever.
      const planner_gauges g = planner_->gauges();
      throw_engine_error(errc::no_capacity,
                         detail::cat("engine_loop: ", planner_->live(), " requests cannot progress (waiting ", g.waiting,
                                     ", running ", g.running, ", pages in use ", g.pages_in_use, " of ", g.pages_total,
                                     ")"));
    }
    if (!launched && prev == nullptr) {
      // Idle: sleep until a command arrives. reset() before looking, so a
      // set() after the look wakes the wait.
      wake_->reset();
      bool empty = false;
      {
        std::lock_guard lock(mutex_);
        empty = commands_.empty() && !stopping_;
      }
      if (empty) co_await wake_->async_wait(coro::as_tuple_task);
    }
  }
  if (prev != nullptr) (void)co_await collect(*prev);
  {
    std::lock_guard lock(mutex_);
    taken_.swap(commands_);
  }
  for (command& c : taken_) {
    if (c.channel) c.channel->push({}, finish_reason::cancelled);
  }
  taken_.clear();
  for (auto& [id, channel] : channels_) channel->push({}, finish_reason::cancelled);
  channels_.clear();
  publish_gauges();
}

}  // namespace cobatch::engine
