// Built against an installed cobatch: proves the installed headers and
// exported targets are enough to compile, link and run a coroutine, and that
// cobatch's initiating functions serve asio::awaitable with whichever
// compiler builds this project (Asio's co_await support is part of
// cobatch::coro's usage requirements, which Asio 1.22 does not detect under
// Clang by itself).
#include <cobatch/coro/completion_reactor.hpp>
#include <cobatch/coro/sync_wait.hpp>
#include <cobatch/coro/task.hpp>

#include <asio/awaitable.hpp>
#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/use_awaitable.hpp>

#include <atomic>
#include <cstdio>
#include <exception>
#include <memory>
#include <system_error>

#if !defined(ASIO_HAS_CO_AWAIT)
#error "cobatch::coro should give its users Asio's co_await support"
#endif

namespace {

// A fence set by hand, as a GPU would complete one.
class manual_fence {
 public:
  cobatch::coro::fence_status query() const noexcept {
    return state_->load(std::memory_order_acquire) ? cobatch::coro::fence_status::ready()
                                                   : cobatch::coro::fence_status::pending();
  }
  void set() const noexcept { state_->store(true, std::memory_order_release); }

 private:
  std::shared_ptr<std::atomic<bool>> state_ = std::make_shared<std::atomic<bool>>(false);
};

asio::awaitable<int> await_fence(cobatch::coro::completion_reactor& reactor, manual_fence fence) {
  fence.set();
  co_await reactor.async_wait(fence, asio::use_awaitable);  // throws on error
  co_return 7;
}

}  // namespace

int main() {
  // The lambda must outlive the task: a coroutine lambda's captures (and
  // the closure itself) live in the closure object, not in the frame.
  auto answer = []() -> cobatch::coro::task<int> { co_return 42; };
  if (cobatch::coro::sync_wait(answer()) != 42) return 1;

  asio::io_context io;
  cobatch::coro::completion_reactor reactor(io.get_executor());
  reactor.start_thread();  // an io_context does not poll the reactor itself
  int result = 0;
  std::exception_ptr error;
  asio::co_spawn(io, await_fence(reactor, manual_fence{}), [&](std::exception_ptr e, int value) {
    error = e;
    result = value;
  });
  io.run();
  reactor.stop_thread();
  if (error) {
    std::fputs("consumer: asio::awaitable wait on the reactor failed\n", stderr);
    return 1;
  }
  return result == 7 ? 0 : 1;
}
