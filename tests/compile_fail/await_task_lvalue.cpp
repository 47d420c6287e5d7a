// A task is awaited once, as an rvalue: awaiting a named task without
// std::move would silently allow a second await, so it does not compile.
// expect: (passing [^ ]*cobatch::coro::task<int>[^ ]* as [^ ]*this[^ ]* argument discards qualifiers|no member named 'await_ready' in 'cobatch::coro::task<int>')
#include "cobatch/coro/task.hpp"

#include <utility>

cobatch::coro::task<int> one() { co_return 1; }

cobatch::coro::task<int> twice() {
  auto t = one();
#ifdef COBATCH_COMPILE_FAIL
  co_return co_await t;
#else
  co_return co_await std::move(t);
#endif
}

int main() { (void)twice(); }
