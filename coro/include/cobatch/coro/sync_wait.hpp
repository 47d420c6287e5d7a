// sync_wait: runs a task to completion on the calling thread and returns its
// result (or throws its exception). For tests, main() and tools; a server runs
// its loop instead.
#pragma once

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/spawn.hpp"
#include "cobatch/coro/task.hpp"

#include <exception>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>

namespace cobatch::coro {

namespace detail {
// Runs `loop` until `finished`. run() returns early only when stopped or when
// no work is left; the latter with the task unfinished means it waits on
// something that can never complete, which is reported instead of hanging.
inline void drive_until(run_loop& loop, const bool& finished) {
  while (!finished) {
    loop.restart();
    loop.run();
    if (!finished && !loop.stopped()) {
      throw std::logic_error(
          "cobatch: sync_wait: the task is suspended on something that holds no work on its "
          "executor and can never resume it");
    }
  }
}
}  // namespace detail

/// Runs `t` on `loop` (which may have a completion_reactor attached) until it
/// finishes. The loop runs other work queued on it meanwhile.
template <typename T>
T sync_wait(run_loop& loop, task<T> t) {
  std::exception_ptr error;
  bool finished = false;
  if constexpr (std::is_void_v<T>) {
    spawn(loop.get_executor(), std::move(t), [&](std::exception_ptr e) {
      error = e;
      finished = true;
    });
    detail::drive_until(loop, finished);
    if (error) std::rethrow_exception(error);
  } else {
    std::optional<T> result;
    spawn(loop.get_executor(), std::move(t), [&](std::exception_ptr e, T value) {
      error = e;
      if (!e) result.emplace(std::move(value));
      finished = true;
    });
    detail::drive_until(loop, finished);
    if (error) std::rethrow_exception(error);
    return std::move(*result);
  }
}

/// Runs `t` on a fresh run_loop on the calling thread.
template <typename T>
T sync_wait(task<T> t) {
  run_loop loop;
  return sync_wait(loop, std::move(t));
}

}  // namespace cobatch::coro
