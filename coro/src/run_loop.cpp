#include "cobatch/coro/run_loop.hpp"

#include "cobatch/coro/completion_reactor.hpp"

#include <concurrentqueue/concurrentqueue.h>

#include <thread>

namespace cobatch::coro {

namespace detail {
struct remote_queue {
  moodycamel::ConcurrentQueue<loop_item> items;
};
}  // namespace detail

thread_local run_loop* run_loop::current_ = nullptr;

run_loop::run_loop(options opts)
    : options_(opts), remote_(std::make_unique<detail::remote_queue>()) {}

run_loop::~run_loop() {
  // Waits still pending in the attached reactor would complete into this
  // loop after it is gone: they are destroyed with it, as queued work is.
  if (reactor_ != nullptr) reactor_->abandon(*this);
  detach();
  // Queued work is destroyed, not run. A destroyed completion destroys its
  // handler, which frees what it owns: a coro::use_task handler abandons the
  // task chain waiting for it, so its frames are freed (see chain_root); a
  // coroutine handle queued here belongs to whoever owns its task. Destroying
  // may queue more (a frame's destructor may post), so repeat until empty.
  for (;;) {
    detail::loop_item item;
    if (!local_.empty()) {
      item = local_.front();
      local_.pop_front();
    } else if (!remote_->items.try_dequeue(item)) {
      break;
    }
    delete item.op;
  }
  shutdown();
}

void run_loop::attach(completion_reactor& reactor) {
  detach();
  if (reactor.attached_ != nullptr) reactor.attached_->detach();
  reactor_ = &reactor;
  reactor.attached_ = this;
  reactor.set_sleeper(&idle_);
}

void run_loop::detach() noexcept {
  if (reactor_ != nullptr) {
    reactor_->set_sleeper(nullptr);
    reactor_->attached_ = nullptr;
    reactor_ = nullptr;
  }
}

void run_loop::push(detail::loop_item item) {
  if (running_in_this_thread()) {
    local_.push_back(item);
    return;
  }
  remote_->items.enqueue(item);
  wake();
}

void run_loop::schedule(std::coroutine_handle<> h) { push({h, nullptr}); }

void run_loop::stop() noexcept {
  stopped_.store(true, std::memory_order_release);
  idle_.wake();
}

void run_loop::work_finished() noexcept {
  if (work_.fetch_sub(1, std::memory_order_acq_rel) == 1) idle_.wake();
}

std::size_t run_loop::queued() const noexcept {
  return (running_in_this_thread() ? local_.size() : 0) + remote_->items.size_approx();
}

void run_loop::run_item(detail::loop_item item) {
  if (item.op != nullptr) {
    std::unique_ptr<detail::loop_op> op(item.op);
    op->run();
  } else {
    item.coroutine.resume();
  }
}

std::size_t run_loop::drain_remote() {
  detail::loop_item batch[64];
  std::size_t n = remote_->items.try_dequeue_bulk(batch, 64);
  for (std::size_t i = 0; i < n; ++i) local_.push_back(batch[i]);
  return n;
}

namespace {
// Makes `loop` the current loop of this thread for the scope, so that posts
// from inside handlers take the lock-free local path.
class current_scope {
 public:
  current_scope(run_loop*& slot, run_loop* loop) noexcept : slot_(slot), saved_(slot) { slot = loop; }
  ~current_scope() { slot_ = saved_; }
  current_scope(const current_scope&) = delete;
  current_scope& operator=(const current_scope&) = delete;

 private:
  run_loop*& slot_;
  run_loop* saved_;
};
}  // namespace

std::size_t run_loop::poll() {
  current_scope scope(current_, this);
  std::size_t count = 0;
  drain_remote();
  if (reactor_ != nullptr) reactor_->poll();
  // Only what is ready now: items queued while running wait for the next call.
  for (std::size_t ready = local_.size(); ready > 0 && !stopped(); --ready) {
    auto item = local_.front();
    local_.pop_front();
    run_item(item);
    ++count;
  }
  return count;
}

void run_loop::idle_wait(backoff& state) {
  const bool gpu_work_pending = reactor_ != nullptr && reactor_->pending() > 0;
  if (gpu_work_pending) {
    switch (state.next()) {
      case backoff::phase::spin:
        backoff::pause();
        return;
      case backoff::phase::yield:
        std::this_thread::yield();
        return;
      case backoff::phase::sleep:
        break;
    }
  }
  idle_.announce();
  // Re-check after announcing: anything published before a waker saw the
  // announcement is visible here, anything after it wakes us.
  if (remote_->items.size_approx() != 0 || stopped() ||
      work_.load(std::memory_order_acquire) == 0 ||
      (!gpu_work_pending && reactor_ != nullptr && reactor_->pending() > 0)) {
    idle_.withdraw();
    return;
  }
  idle_.sleep(gpu_work_pending ? state.sleep_for() : std::chrono::microseconds{0});
}

std::size_t run_loop::run() {
  current_scope scope(current_, this);
  std::size_t count = 0;
  backoff state(options_.backoff);
  while (!stopped()) {
    if (!local_.empty()) {
      auto item = local_.front();
      local_.pop_front();
      run_item(item);
      ++count;
      state.reset();
      continue;
    }
    if (drain_remote() > 0) continue;
    if (reactor_ != nullptr && reactor_->poll() > 0) continue;
    if (work_.load(std::memory_order_acquire) == 0 && remote_->items.size_approx() == 0) break;
    idle_wait(state);
  }
  return count;
}

}  // namespace cobatch::coro
