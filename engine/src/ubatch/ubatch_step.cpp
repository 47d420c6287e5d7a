#include "cobatch/engine/ubatch/detail/ubatch_step.hpp"

#include "cobatch/engine/ubatch/ubatch_error.hpp"
#include "cobatch/engine/ubatch/timeline.hpp"

#include <asio/error.hpp>

#include <string>
#include <system_error>

namespace cobatch::engine::detail {

// Runs the hooks that waited for a micro-batch's switch. A coroutine of its
// own because hooks may await (a hook typically waits for a collective's
// result); its driver carries the step's executor and cancellation slot so
// that what the hooks await behaves as it would inside a micro-batch.
coro::detail::driver ubatch_step::run_hooks(ubatch_step& step, std::vector<pending_hook> hooks) {
  for (auto& hook : hooks) {
    // Once the step is cancelled its result is thrown away, and the caller
    // waits for the streams before returning, so the remaining hooks (which
    // only wait for results) are dropped unrun.
    if (step.cancelled_) break;
    try {
      co_await std::move(hook.work);
    } catch (...) {
      // The hook did the registrant's work (waiting for its collective):
      // the registrant is the one that failed.
      step.fail(hook.registrant, std::current_exception());
    }
  }
}

ubatch_step::ubatch_step(std::int32_t count, timeline* trace)
    : slots_(static_cast<std::size_t>(count)), trace_(trace) {}

void ubatch_step::set_order(const std::vector<std::int32_t>& order) {
  order_ = order;
  position_.resize(order_.size());
  for (std::int32_t p = 0; p < count(); ++p) position_[order_[p]] = p;
}

std::int32_t ubatch_step::turn_after(std::int32_t i, std::int32_t k) const noexcept {
  const std::int32_t n = count();
  if (order_.empty()) return (i + k) % n;
  return order_[(position_[i] + k) % n];
}

ubatch_step::~ubatch_step() { detach_parent(); }

std::coroutine_handle<> ubatch_step::start(std::coroutine_handle<> parent, asio::any_io_executor executor,
                                           asio::cancellation_slot parent_slot) {
  parent_ = parent;
  executor_ = std::move(executor);
  if (parent_slot.is_connected()) {
    parent_slot_ = parent_slot;
    parent_slot_.assign([this](asio::cancellation_type type) { cancel_from_parent(type); });
  }
  if (slots_.empty()) return parent_;
  return resume_slot(order_.empty() ? 0 : order_[0]);
}

void ubatch_step::cancel_from_parent(asio::cancellation_type type) noexcept {
  if ((type & (asio::cancellation_type::terminal | asio::cancellation_type::partial |
               asio::cancellation_type::total)) == asio::cancellation_type::none) {
    return;
  }
  parent_cancelled_ = true;
  cancelled_ = true;
  // Whatever the running micro-batch awaits is abandoned too; the others are
  // parked at switches and see the cancellation when they resume.
  signal_.emit(type);
}

std::coroutine_handle<> ubatch_step::resume_slot(std::int32_t j) noexcept {
  auto& s = slots_[j];
  s.st = state::running;
  if (trace_ != nullptr) s.resumed_at = std::chrono::steady_clock::now();
  return s.handle;
}

std::coroutine_handle<> ubatch_step::next_after(std::int32_t i) noexcept {
  const std::int32_t n = count();
  for (std::int32_t k = 1; k <= n; ++k) {
    const std::int32_t j = turn_after(i, k);
    auto& s = slots_[j];
    if (s.st == state::not_started) {
      if (cancelled_) {
        // Never started: nothing to unwind, nothing enqueued.
        s.st = state::finished;
        continue;
      }
      return resume_slot(j);
    }
    if (s.st == state::parked) return resume_slot(j);
  }
  // Every micro-batch has finished.
  detach_parent();
  return parent_;
}

std::coroutine_handle<> ubatch_step::hand_over(std::int32_t i) noexcept {
  auto& s = slots_[i];
  if (s.hooks.empty()) return next_after(i);
  std::vector<pending_hook> hooks = std::move(s.hooks);
  s.hooks.clear();
  try {
    hooks_ = run_hooks(*this, std::move(hooks));
    hooks_.bind(hook_owner_, static_cast<std::size_t>(i), executor_, signal_.slot(), chain_);
    return hooks_.handle();
  } catch (...) {
    // No memory for the runner's frame: the hooks cannot run, so the step
    // fails rather than continue without them.
    fail(i, std::current_exception());
    return next_after(i);
  }
}

std::coroutine_handle<> ubatch_step::suspend_at_switch(std::int32_t i, std::coroutine_handle<> h,
                                                       switch_kind kind) noexcept {
  auto& s = slots_[i];
  s.handle = h;
  s.st = state::parked;
  ++s.switches;
  if (trace_ != nullptr) {
    trace_host_span(i, kind == switch_kind::yield       ? "to yield"
                       : kind == switch_kind::to_comm   ? "to comm"
                                                        : "to compute");
  }
  return hand_over(i);
}

void ubatch_step::resume_from_switch(std::int32_t i) {
  if (!cancelled_) return;
  const std::string why = parent_cancelled_ ? "the step was cancelled"
                                            : "micro-batch " + std::to_string(failed_index_) + " failed";
  throw std::system_error(make_error_code(asio::error::operation_aborted),
                          "cobatch: micro-batch " + std::to_string(i) + " cancelled at its switch " +
                              std::to_string(slots_[i].switches) + ": " + why);
}

std::coroutine_handle<> ubatch_step::finish(std::int32_t i) noexcept {
  auto& s = slots_[i];
  s.st = state::finished;
  if (trace_ != nullptr) trace_host_span(i, "to end");
  return hand_over(i);
}

void ubatch_step::fail(std::int32_t i, std::exception_ptr error) noexcept {
  // After a cancellation, what the siblings throw is its echo, not news.
  if (error_ || cancelled_) return;
  error_ = std::move(error);
  failed_index_ = i;
  failed_switches_ = slots_[i].switches;
  cancelled_ = true;
}

void ubatch_step::add_hook(std::int32_t registrant, coro::task<void> hook) {
  const std::int32_t n = count();
  std::int32_t target = registrant;
  for (std::int32_t k = 1; k < n; ++k) {
    const std::int32_t j = turn_after(registrant, k);
    if (slots_[j].st != state::finished) {
      target = j;
      break;
    }
  }
  slots_[target].hooks.push_back({registrant, std::move(hook)});
}

void ubatch_step::detach_parent() noexcept {
  if (parent_slot_.is_connected()) {
    parent_slot_.clear();
    parent_slot_ = {};
  }
}

void ubatch_step::rethrow_if_failed() {
  detach_parent();
  if (error_) throw ubatch_error(failed_index_, count(), failed_switches_, error_);
  if (parent_cancelled_) {
    throw std::system_error(make_error_code(asio::error::operation_aborted),
                            "cobatch: the micro-batched step was cancelled");
  }
}

void ubatch_step::trace_host_span(std::int32_t i, const char* label) noexcept {
  try {
    trace_->add_host_span("host", i, label, slots_[i].resumed_at, std::chrono::steady_clock::now());
  } catch (...) {
    // A trace that cannot grow loses a span; the step goes on.
  }
}

}  // namespace cobatch::engine::detail
