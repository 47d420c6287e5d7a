// A gate that host work (a function enqueued on a host stream) waits at
// until the test opens it: an ordering the test decides, where a sleep would
// only make it likely. Copies share one gate.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>

namespace cobatch::test {

class host_gate {
 public:
  host_gate() : state_(std::make_shared<state>()) {}

  /// Lets every waiter through, now and later; idempotent.
  void open() const {
    {
      std::lock_guard lock(state_->mutex);
      state_->open = true;
    }
    state_->cv.notify_all();
  }
  void wait() const {
    std::unique_lock lock(state_->mutex);
    state_->cv.wait(lock, [this] { return state_->open; });
  }

 private:
  struct state {
    std::mutex mutex;
    std::condition_variable cv;
    bool open = false;
  };
  std::shared_ptr<state> state_;
};

}  // namespace cobatch::test
