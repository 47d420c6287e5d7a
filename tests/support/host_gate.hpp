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
  /// Holds `s` (a stream or stream_ref) here: its work enqueued after this
  /// call starts once the gate opens.
  template <class Stream>
  void hold(const Stream& s) const {
    s.enqueue([gate = *this] { gate.wait(); });
  }

 private:
  struct state {
    std::mutex mutex;
    std::condition_variable cv;
    bool open = false;
  };
  std::shared_ptr<state> state_;
};

/// A host_gate that opens when it goes out of scope, so that a test that
/// fails before opening it does not leave a stream's worker waiting forever
/// (destroying a stream waits for its work). Declare it after the device.
class scoped_host_gate : public host_gate {
 public:
  scoped_host_gate() = default;
  scoped_host_gate(const scoped_host_gate&) = delete;
  scoped_host_gate& operator=(const scoped_host_gate&) = delete;
  ~scoped_host_gate() { open(); }
};

}  // namespace cobatch::test
