// The state of one micro-batched step, shared by its micro-batch coroutines:
// whose turn it is, who is parked where, the hooks waiting for a switch, the
// first failure. Not a public interface: ubatch_scheduler and ubatch_context
// are. Kept free of templates so that the hand-over logic is compiled once.
#pragma once

#include <cobatch/coro/detail/driver.hpp>
#include <cobatch/coro/task.hpp>
#include <cobatch/engine/ubatch/switch_kind.hpp>

#include <asio/any_io_executor.hpp>
#include <asio/cancellation_signal.hpp>

#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <utility>
#include <vector>

namespace cobatch::engine {

class timeline;

namespace detail {

// The owner of the micro-batches' driver coroutines: a driver that returns
// finishes its micro-batch, one that throws fails it.
class ubatch_step final : public coro::detail::driver_owner {
 public:
  ubatch_step(std::int32_t count, timeline* trace);
  ubatch_step(const ubatch_step&) = delete;
  ubatch_step& operator=(const ubatch_step&) = delete;
  ~ubatch_step();

  std::int32_t count() const noexcept { return static_cast<std::int32_t>(slots_.size()); }

  /// The order in which micro-batches take turns: a permutation of
  /// 0 .. count-1 (0, 1, ... by default), validated by the scheduler.
  void set_order(const std::vector<std::int32_t>& order);

  /// Micro-batch i's coroutine, suspended before its first statement.
  void set_runner(std::int32_t i, std::coroutine_handle<> h) noexcept { slots_[i].handle = h; }

  /// Starts the step for the awaiting `parent`: returns micro-batch 0, which
  /// the caller resumes by symmetric transfer. `parent_slot` (may be
  /// unconnected) cancels the whole step.
  std::coroutine_handle<> start(std::coroutine_handle<> parent, asio::any_io_executor executor,
                                asio::cancellation_slot parent_slot);

  /// Micro-batch i reached a switch: parks `h` and returns who runs next
  /// (after running the hooks waiting for i's switch).
  std::coroutine_handle<> suspend_at_switch(std::int32_t i, std::coroutine_handle<> h, switch_kind kind) noexcept;
  /// Micro-batch i continues after a switch; throws if the step was cancelled
  /// meanwhile (a sibling failed, or the caller cancelled).
  void resume_from_switch(std::int32_t i);
  /// Micro-batch i's driver threw: records the failure (the first one wins)
  /// and cancels the step.
  void driver_failed(std::size_t i, std::exception_ptr error) noexcept override {
    fail(static_cast<std::int32_t>(i), std::move(error));
  }
  /// Micro-batch i's driver returned (or threw, after driver_failed):
  /// returns who runs next, or the parent once every micro-batch finished.
  std::coroutine_handle<> driver_done(std::size_t i) noexcept override {
    return finish(static_cast<std::int32_t>(i));
  }

  /// Runs `hook` when the micro-batch after `registrant` (the next one still
  /// running) reaches its next switch, or finishes; the registrant itself if
  /// it is the only one left.
  void add_hook(std::int32_t registrant, coro::task<void> hook);

  /// After the step: true if it did not complete normally.
  bool failed() const noexcept { return static_cast<bool>(error_) || parent_cancelled_; }
  /// Throws ubatch_error for the first failure, or operation_aborted if
  /// the caller cancelled the step. Disconnects the parent's cancellation.
  void rethrow_if_failed();
  /// Disconnects the parent's cancellation slot; idempotent.
  void detach_parent() noexcept;

  bool cancelled() const noexcept { return cancelled_; }
  std::int32_t switches(std::int32_t i) const noexcept { return slots_[i].switches; }
  const asio::any_io_executor& executor() const noexcept { return executor_; }
  /// The awaiting chain's root, handed to the coroutines the step starts (see
  /// coro::detail::chain_root).
  void set_chain(coro::detail::chain_root* chain) noexcept { chain_ = chain; }
  /// The slot the running micro-batch's Asio operations connect to: only one
  /// micro-batch runs at a time, so one signal serves all.
  asio::cancellation_slot slot() noexcept { return signal_.slot(); }

 private:
  enum class state : std::uint8_t { not_started, running, parked, finished };
  struct pending_hook {
    std::int32_t registrant;
    coro::task<void> work;
  };
  struct slot_state {
    std::coroutine_handle<> handle;
    state st = state::not_started;
    std::int32_t switches = 0;
    std::vector<pending_hook> hooks;
    std::chrono::steady_clock::time_point resumed_at{};
  };
  // Owns the driver that runs the hooks waiting for micro-batch i's switch,
  // and hands over as the switch would have once they are done.
  class hook_owner final : public coro::detail::driver_owner {
   public:
    explicit hook_owner(ubatch_step& step) noexcept : step_(&step) {}
    void driver_failed(std::size_t i, std::exception_ptr error) noexcept override {
      step_->fail(static_cast<std::int32_t>(i), std::move(error));
    }
    std::coroutine_handle<> driver_done(std::size_t i) noexcept override {
      return step_->next_after(static_cast<std::int32_t>(i));
    }

   private:
    ubatch_step* step_;
  };
  static coro::detail::driver run_hooks(ubatch_step& step, std::vector<pending_hook> hooks);

  std::coroutine_handle<> finish(std::int32_t i) noexcept;
  void fail(std::int32_t i, std::exception_ptr error) noexcept;
  /// Runs i's hooks (if any), then hands over to next_after(i).
  std::coroutine_handle<> hand_over(std::int32_t i) noexcept;
  std::coroutine_handle<> next_after(std::int32_t i) noexcept;
  /// The micro-batch k turns after i.
  std::int32_t turn_after(std::int32_t i, std::int32_t k) const noexcept;
  std::coroutine_handle<> resume_slot(std::int32_t j) noexcept;
  void trace_host_span(std::int32_t i, const char* label) noexcept;
  void cancel_from_parent(asio::cancellation_type type) noexcept;

  std::vector<slot_state> slots_;
  // Turn order; empty for 0, 1, ..., N-1.
  std::vector<std::int32_t> order_;     // turn position -> micro-batch
  std::vector<std::int32_t> position_;  // micro-batch -> turn position
  timeline* trace_;
  std::coroutine_handle<> parent_;
  asio::any_io_executor executor_;
  coro::detail::chain_root* chain_ = nullptr;
  asio::cancellation_slot parent_slot_;
  asio::cancellation_signal signal_;
  std::exception_ptr error_;
  std::int32_t failed_index_ = -1;
  std::int32_t failed_switches_ = 0;
  bool cancelled_ = false;
  bool parent_cancelled_ = false;
  hook_owner hook_owner_{*this};
  // The hook driver that ran last: it is finished (or running) whenever a
  // new one replaces it, as only one coroutine of the step runs at a time.
  coro::detail::driver hooks_;
};

}  // namespace detail
}  // namespace cobatch::engine
