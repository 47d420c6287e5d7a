// A task is awaited once, as an rvalue: awaiting a named task without
// std::move would silently allow a second await, so it does not compile.
#include "cobatch/coro/task.hpp"

cobatch::coro::task<int> one() { co_return 1; }

cobatch::coro::task<int> twice() {
  auto t = one();
  co_return co_await t;
}

int main() { (void)twice(); }
