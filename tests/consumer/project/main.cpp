// Built against an installed cobatch: proves the installed headers and
// exported targets are enough to compile, link and run a coroutine.
#include <cobatch/coro/sync_wait.hpp>
#include <cobatch/coro/task.hpp>

int main() {
  // The lambda must outlive the task: a coroutine lambda's captures (and
  // the closure itself) live in the closure object, not in the frame.
  auto answer = []() -> cobatch::coro::task<int> { co_return 42; };
  return cobatch::coro::sync_wait(answer()) == 42 ? 0 : 1;
}
