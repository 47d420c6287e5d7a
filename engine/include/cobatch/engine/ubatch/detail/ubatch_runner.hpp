// The coroutine that runs one micro-batch's function inside a step and tells
// the step when it is done. Not a public interface.
#pragma once

#include <cobatch/engine/ubatch/detail/ubatch_step.hpp>

#include <coroutine>
#include <cstdint>
#include <exception>
#include <utility>

namespace cobatch::engine::detail {

class ubatch_runner {
 public:
  struct promise_type : coro::detail::promise_context {
    ubatch_step* step = nullptr;
    std::int32_t index = 0;

    ubatch_runner get_return_object() noexcept {
      return ubatch_runner{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    // Started by the step when the turn first reaches it.
    std::suspend_always initial_suspend() noexcept { return {}; }
    struct final_awaiter {
      bool await_ready() noexcept { return false; }
      std::coroutine_handle<> await_suspend(std::coroutine_handle<promise_type> self) noexcept {
        return self.promise().step->finish(self.promise().index);
      }
      void await_resume() noexcept {}
    };
    final_awaiter final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { step->fail(index, std::current_exception()); }
  };

  explicit ubatch_runner(std::coroutine_handle<promise_type> h) noexcept : handle_(h) {}
  ubatch_runner(ubatch_runner&& other) noexcept : handle_(std::exchange(other.handle_, {})) {}
  ubatch_runner& operator=(ubatch_runner&&) = delete;
  ~ubatch_runner() {
    // Finished (suspended at final) or never started: either way the frame
    // is ours to destroy.
    if (handle_) handle_.destroy();
  }
  std::coroutine_handle<promise_type> handle() const noexcept { return handle_; }

 private:
  std::coroutine_handle<promise_type> handle_;
};

}  // namespace cobatch::engine::detail
