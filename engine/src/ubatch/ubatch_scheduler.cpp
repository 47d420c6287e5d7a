#include "cobatch/engine/ubatch/ubatch_scheduler.hpp"

#include "cobatch/coro/use_task.hpp"

#include "message.hpp"

namespace cobatch::engine {

ubatch_scheduler::ubatch_scheduler(gpu::device& device, gpu::stream_pool& pool, ubatch_scheduler_options options)
    : device_(&device), pool_(&pool), options_(options) {
  if (options_.streams != stream_assignment::shared && options_.streams != stream_assignment::per_ubatch) {
    throw_engine_error(errc::unknown_mode, "ubatch_scheduler: unknown stream_assignment");
  }
}

ubatch_scheduler::~ubatch_scheduler() = default;

gpu::stream_ref ubatch_scheduler::compute_stream(std::int32_t ubatch) const noexcept {
  const auto i = options_.streams == stream_assignment::shared ? 0 : static_cast<std::size_t>(ubatch);
  return pool_->at(gpu::stream_role::compute, i);
}

gpu::stream_ref ubatch_scheduler::comm_stream(std::int32_t ubatch) const noexcept {
  const auto i = options_.streams == stream_assignment::shared ? 0 : static_cast<std::size_t>(ubatch);
  return pool_->at(gpu::stream_role::communication, i);
}

const std::string& ubatch_scheduler::compute_lane(std::int32_t i) const noexcept { return compute_lanes_[i]; }
const std::string& ubatch_scheduler::comm_lane(std::int32_t i) const noexcept { return comm_lanes_[i]; }

void ubatch_scheduler::begin_step(std::int32_t count) {
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
    while (compute_done_.size() < n) {
      const auto i = compute_done_.size();
      compute_done_.push_back(device_->make_event());
      comm_done_.push_back(device_->make_event());
      const bool shared = options_.streams == stream_assignment::shared;
      const auto c = i % pool_->size(gpu::stream_role::compute);
      const auto m = i % pool_->size(gpu::stream_role::communication);
      compute_lanes_.push_back(shared ? std::string("compute") : detail::cat("compute ", c));
      comm_lanes_.push_back(shared ? std::string("comm") : detail::cat("comm ", m));
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
