// A run loop, its completion reactor and a device of any backend on them:
// what the device tests of every backend start from.
#pragma once

#include "cobatch/coro/completion_reactor.hpp"
#include "cobatch/coro/run_loop.hpp"

#include <utility>

namespace cobatch::test {

template <class Device>
struct device_fixture {
  coro::run_loop loop;
  coro::completion_reactor reactor{loop.get_executor()};
  Device dev;

  /// The device is made from the reactor and `args` (its options, ordinal).
  template <class... Args>
  explicit device_fixture(Args&&... args) : dev(reactor, std::forward<Args>(args)...) {
    loop.attach(reactor);
  }

  /// Runs the loop until `done` (a bool, an optional, ...) holds: work the
  /// loop ran out of may come back from the device's threads.
  template <class Done>
  void run_until(const Done& done) {
    while (!done) {
      loop.restart();
      loop.run();
    }
  }
};

}  // namespace cobatch::test
