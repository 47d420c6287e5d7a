// driver: the coroutine that an awaiting operation starts to drive one piece of
// work (a when_all child, a micro-batch, a micro-batch's hooks) and that
// reports back to its owner when that work returns or throws. One promise for
// every such coroutine, so the rules (started by the owner, exceptions go to
// the owner, the owner says who runs after it) are written once.
#pragma once

#include "cobatch/coro/task.hpp"

#include <coroutine>
#include <cstddef>
#include <exception>
#include <utility>

namespace cobatch::coro::detail {

/// What a driver reports to.
class driver_owner {
 public:
  /// Driver `index` let an exception escape; driver_done follows.
  virtual void driver_failed(std::size_t index, std::exception_ptr error) noexcept = 0;
  /// Driver `index` finished (it is suspended at its end and may be
  /// destroyed from here on): returns who runs next, std::noop_coroutine()
  /// for nobody.
  virtual std::coroutine_handle<> driver_done(std::size_t index) noexcept = 0;

 protected:
  ~driver_owner() = default;
};

/// Owns the coroutine frame: destroying the driver destroys the frame, which
/// is allowed before its first resume and after it finished.
class [[nodiscard]] driver {
 public:
  class promise_type : public promise_context {
   public:
    driver get_return_object() noexcept {
      return driver{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    // Started by the owner, once bound.
    std::suspend_always initial_suspend() noexcept { return {}; }
    struct final_awaiter {
      bool await_ready() noexcept { return false; }
      std::coroutine_handle<> await_suspend(std::coroutine_handle<promise_type> self) noexcept {
        promise_type& p = self.promise();
        return p.owner_->driver_done(p.index_);
      }
      void await_resume() noexcept {}
    };
    final_awaiter final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { owner_->driver_failed(index_, std::current_exception()); }

   private:
    friend class driver;
    driver_owner* owner_ = nullptr;
    std::size_t index_ = 0;
  };
  using handle_type = std::coroutine_handle<promise_type>;

  driver() noexcept = default;
  driver(driver&& other) noexcept : handle_(std::exchange(other.handle_, {})) {}
  driver& operator=(driver&& other) noexcept {
    if (this != &other) {
      reset();
      handle_ = std::exchange(other.handle_, {});
    }
    return *this;
  }
  ~driver() { reset(); }

  /// Before the first resume: whom to report to as which index, the
  /// executor and cancellation slot that what the driver awaits sees, and the
  /// root of the awaiting chain (see chain_root; null outside coro::spawn).
  void bind(driver_owner& owner, std::size_t index, asio::any_io_executor executor,
            asio::cancellation_slot slot, chain_root* chain) {
    promise_type& p = handle_.promise();
    p.owner_ = &owner;
    p.index_ = index;
    p.set_executor(std::move(executor));
    p.set_cancellation_slot(slot);
    p.set_chain(chain);
  }

  handle_type handle() const noexcept { return handle_; }
  explicit operator bool() const noexcept { return static_cast<bool>(handle_); }

 private:
  explicit driver(handle_type h) noexcept : handle_(h) {}
  void reset() noexcept {
    if (handle_) std::exchange(handle_, {}).destroy();
  }

  handle_type handle_;
};

}  // namespace cobatch::coro::detail
