#include "cobatch/engine/ubatch/ubatch_scheduler.hpp"

#include "cobatch/coro/use_task.hpp"

#include "message.hpp"

#include <algorithm>

namespace cobatch::engine {

ubatch_scheduler::ubatch_scheduler(gpu::device& device, gpu::stream_pool& pool, ubatch_scheduler_options options)
    : device_(&device), pool_(&pool), options_(options) {
  if (options_.streams != stream_assignment::shared && options_.streams != stream_assignment::per_ubatch &&
      options_.streams != stream_assignment::least_loaded) {
    throw_engine_error(errc::unknown_mode, "ubatch_scheduler: unknown stream_assignment");
  }
}

ubatch_scheduler::~ubatch_scheduler() = default;

std::size_t ubatch_scheduler::stream_slot(gpu::stream_role role, std::int32_t ubatch) const noexcept {
  const auto i = static_cast<std::size_t>(ubatch);
  switch (options_.streams) {
    case stream_assignment::shared: return 0;
    case stream_assignment::per_ubatch: return i;
    case stream_assignment::least_loaded: {
      const auto& assigned = role == gpu::stream_role::compute ? compute_assigned_ : comm_assigned_;
      return i < assigned.size() ? assigned[i] : i;
    }
  }
  return 0;
}

gpu::stream_ref ubatch_scheduler::compute_stream(std::int32_t ubatch) const noexcept {
  return pool_->at(gpu::stream_role::compute, stream_slot(gpu::stream_role::compute, ubatch));
}

gpu::stream_ref ubatch_scheduler::comm_stream(std::int32_t ubatch) const noexcept {
  return pool_->at(gpu::stream_role::communication, stream_slot(gpu::stream_role::communication, ubatch));
}

void ubatch_scheduler::assign_least_loaded(std::int32_t count, const ubatch_plan* plan) {
  const auto n = static_cast<std::size_t>(count);
  weights_.assign(n, 1);
  if (plan != nullptr) {
    for (std::int32_t i = 0; i < count; ++i) weights_[i] = static_cast<std::uint64_t>((*plan)[i].padded_tokens);
  }
  compute_assigned_.assign(n, 0);
  comm_assigned_.assign(n, 0);
  for (const auto role : {gpu::stream_role::compute, gpu::stream_role::communication}) {
    auto& assigned = role == gpu::stream_role::compute ? compute_assigned_ : comm_assigned_;
    std::vector<std::uint64_t> load(pool_->size(role));
    for (std::size_t s = 0; s < load.size(); ++s) load[s] = pool_->load(role, s);
    // In turn order, so that the micro-batch that runs first gets the idlest stream.
    for (std::size_t p = 0; p < n; ++p) {
      const auto i = order_.empty() ? p : static_cast<std::size_t>(order_[p]);
      std::size_t best = 0;
      for (std::size_t s = 1; s < load.size(); ++s)
        if (load[s] < load[best]) best = s;
      assigned[i] = best;
      load[best] += weights_[i];
    }
  }
}

const std::string& ubatch_scheduler::compute_lane(std::int32_t i) const noexcept { return compute_lanes_[i]; }
const std::string& ubatch_scheduler::comm_lane(std::int32_t i) const noexcept { return comm_lanes_[i]; }

void ubatch_scheduler::begin_step(std::int32_t count, const ubatch_plan* plan, const ubatch_run_options& options) {
  if (count < 1) {
    throw_engine_error(errc::invalid_argument,
                       detail::cat("ubatch_scheduler::run: ", count, " micro-batches; at least 1 is needed"));
  }
  if (running_.exchange(true, std::memory_order_acq_rel)) {
    // The per-micro-batch events are the scheduler's: two steps at once
    // would record into each other's joins.
    throw_engine_error(errc::invalid_argument,
                       "ubatch_scheduler::run: a step is already running on this scheduler; use one "
                       "scheduler per concurrent step");
  }
  const auto n = static_cast<std::size_t>(count);
  try {
    order_.clear();
    if (!options.turn_order.empty()) {
      if (options.turn_order.size() != n) {
        throw_engine_error(errc::invalid_argument,
                           detail::cat("ubatch_scheduler::run: a turn order of ", options.turn_order.size(),
                                       " entries for ", count, " micro-batches"));
      }
      std::vector<bool> seen(n);
      for (std::size_t p = 0; p < n; ++p) {
        const std::int32_t i = options.turn_order[p];
        if (i < 0 || i >= count) {
          throw_engine_error(errc::invalid_argument, detail::cat("ubatch_scheduler::run: turn order entry ", p,
                                                                 " is ", i, ", outside [0, ", count, ")"));
        }
        if (seen[static_cast<std::size_t>(i)]) {
          throw_engine_error(errc::invalid_argument, detail::cat("ubatch_scheduler::run: turn order entry ", p,
                                                                 " is ", i, ", which is given twice"));
        }
        seen[static_cast<std::size_t>(i)] = true;
      }
      order_.assign(options.turn_order.begin(), options.turn_order.end());
    }
    while (compute_done_.size() < n) {
      compute_done_.push_back(device_->make_event());
      comm_done_.push_back(device_->make_event());
    }
    if (options_.streams == stream_assignment::least_loaded) assign_least_loaded(count, plan);
    compute_lanes_.resize(std::max(compute_lanes_.size(), n));
    comm_lanes_.resize(std::max(comm_lanes_.size(), n));
    const bool shared = options_.streams == stream_assignment::shared;
    for (std::int32_t i = 0; i < count; ++i) {
      // Lanes name the stream, so spans of micro-batches that share one line up.
      compute_lanes_[i] = shared ? std::string("compute")
                                 : detail::cat("compute ", stream_slot(gpu::stream_role::compute, i) %
                                                               pool_->size(gpu::stream_role::compute));
      comm_lanes_[i] = shared ? std::string("comm")
                              : detail::cat("comm ", stream_slot(gpu::stream_role::communication, i) %
                                                         pool_->size(gpu::stream_role::communication));
    }
  } catch (...) {
    running_.store(false, std::memory_order_release);
    throw;
  }
}

void ubatch_scheduler::join_streams(std::int32_t count) {
  // With shared streams one join covers every micro-batch.
  const std::int32_t pairs = options_.streams == stream_assignment::shared ? 1 : count;
  for (std::int32_t i = 0; i < pairs; ++i) {
    comm_stream(i).record(comm_done_[i]);
    compute_stream(i).wait(comm_done_[i]);
  }
  if (options_.streams == stream_assignment::least_loaded) {
    // Each micro-batch's tokens stay charged to its streams until the work
    // enqueued there so far is done; the compute mark follows the join, so it
    // covers the comm work as well.
    for (std::int32_t i = 0; i < count; ++i) {
      pool_->charge(gpu::stream_role::compute, compute_assigned_[i], weights_[i], compute_stream(i).mark());
      pool_->charge(gpu::stream_role::communication, comm_assigned_[i], weights_[i], comm_stream(i).mark());
    }
  }
}

coro::task<void> ubatch_scheduler::drain(std::int32_t count) {
  // After a failure the caller may free what the step's enqueued work still
  // reads, so the step returns only once its streams have run it all. Their
  // errors are not news: the failure that caused this is what is thrown.
  const std::int32_t streams = options_.streams == stream_assignment::shared ? 1 : count;
  for (std::int32_t i = 0; i < streams; ++i) {
    auto [compute_error] = co_await compute_stream(i).async_wait(coro::as_tuple_task);
    auto [comm_error] = co_await comm_stream(i).async_wait(coro::as_tuple_task);
    (void)compute_error;
    (void)comm_error;
  }
}

}  // namespace cobatch::engine
