// Host backend: fences, events, streams (one worker thread each) and graphs.
#include "cobatch/gpu/error.hpp"
#include "cobatch/gpu/host/host_device.hpp"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <variant>
#include <vector>

namespace cobatch::gpu::host {
namespace {

class host_fence final : public detail::fence_impl {
 public:
  coro::fence_status query() const noexcept override {
    switch (state_.load(std::memory_order_acquire)) {
      case ready: return coro::fence_status::ready();
      case failed: return coro::fence_status::failed(error_);
      default: return coro::fence_status::pending();
    }
  }
  void signal(std::error_code ec) noexcept {
    error_ = ec;
    state_.store(ec ? failed : ready, std::memory_order_release);
    state_.notify_all();
  }
  /// Blocks the calling worker (the "device") until signalled.
  std::error_code wait() const noexcept {
    int s;
    while ((s = state_.load(std::memory_order_acquire)) == pending) state_.wait(pending, std::memory_order_acquire);
    return s == failed ? error_ : std::error_code{};
  }

 private:
  enum : int { pending = 0, ready = 1, failed = 2 };
  std::atomic<int> state_{pending};
  std::error_code error_;  // written before the release store, read after acquire
};

class host_event final : public detail::event_impl {
 public:
  explicit host_event(coro::completion_reactor& reactor) : reactor_(&reactor) {}
  fence current() const override {
    std::lock_guard lock(mutex_);
    return fence(current_);
  }
  std::shared_ptr<host_fence> current_fence() const {
    std::lock_guard lock(mutex_);
    return current_;
  }
  void set(std::shared_ptr<host_fence> f) {
    std::lock_guard lock(mutex_);
    current_ = std::move(f);
  }
  coro::completion_reactor& reactor() const noexcept override { return *reactor_; }
  void* native_handle() const noexcept override { return const_cast<host_event*>(this); }

 private:
  coro::completion_reactor* reactor_;
  mutable std::mutex mutex_;
  std::shared_ptr<host_fence> current_;
};

host_event& as_host(const detail::event_impl& e) {
  auto* h = dynamic_cast<const host_event*>(&e);
  if (h == nullptr) {
    throw std::system_error(make_error_code(errc::invalid_argument),
                            "cobatch: a host stream was given an event of another backend");
  }
  return const_cast<host_event&>(*h);
}

// One captured or queued step of a stream.
struct work_node {
  std::shared_ptr<detail::unique_function> fn;
};
struct record_node {
  host_event* event;  // captured: a fresh fence is made per launch
};
struct wait_node {
  host_event* event;  // captured: the event's fence at launch time is waited on
};
using graph_node = std::variant<work_node, record_node, wait_node>;

// What a stream's worker runs.
struct run_work {
  detail::unique_function fn;
};
struct run_signal {
  std::shared_ptr<host_fence> fence;
};
struct run_wait {
  std::shared_ptr<host_fence> fence;
};
struct run_graph {
  std::shared_ptr<const std::vector<graph_node>> nodes;
  std::vector<std::shared_ptr<host_fence>> records;  // one per record_node, in order
  std::vector<std::shared_ptr<host_fence>> waits;    // one per wait_node, in order
};
struct run_stop {};
using stream_op = std::variant<run_work, run_signal, run_wait, run_graph, run_stop>;

class host_graph_exec final : public detail::graph_exec_impl {
 public:
  explicit host_graph_exec(std::shared_ptr<const std::vector<graph_node>> nodes) : nodes_(std::move(nodes)) {}
  void launch(detail::stream_impl& s) override;
  std::size_t node_count() const noexcept override { return nodes_->size(); }

 private:
  std::shared_ptr<const std::vector<graph_node>> nodes_;
};

class host_graph final : public detail::graph_impl {
 public:
  explicit host_graph(std::vector<graph_node> nodes)
      : nodes_(std::make_shared<const std::vector<graph_node>>(std::move(nodes))) {}
  std::unique_ptr<detail::graph_exec_impl> instantiate() const override {
    return std::make_unique<host_graph_exec>(nodes_);
  }
  std::size_t node_count() const noexcept override { return nodes_->size(); }

 private:
  std::shared_ptr<const std::vector<graph_node>> nodes_;
};

class host_stream final : public detail::stream_impl {
 public:
  host_stream(coro::completion_reactor& reactor, stream_priority priority)
      : reactor_(&reactor), priority_(priority), worker_([this] { run(); }) {}

  ~host_stream() override {
    push(run_stop{});
    worker_.join();
  }

  void enqueue(detail::unique_function fn) override {
    if (capturing_) {
      captured_.push_back(work_node{std::make_shared<detail::unique_function>(std::move(fn))});
      return;
    }
    push(run_work{std::move(fn)});
  }

  void record(detail::event_impl& e) override {
    auto& ev = as_host(e);
    if (capturing_) {
      captured_.push_back(record_node{&ev});
      return;
    }
    auto f = std::make_shared<host_fence>();
    ev.set(f);
    push(run_signal{std::move(f)});
  }

  void wait(const detail::event_impl& e) override {
    auto& ev = as_host(e);
    if (capturing_) {
      captured_.push_back(wait_node{&ev});
      return;
    }
    if (auto f = ev.current_fence()) push(run_wait{std::move(f)});
  }

  fence mark() override {
    if (capturing_) {
      throw std::system_error(make_error_code(errc::capture_invalid),
                              "cobatch: cannot wait for a stream while it is being captured");
    }
    auto f = std::make_shared<host_fence>();
    push(run_signal{f});
    return fence(std::move(f));
  }

  stream_priority priority() const noexcept override { return priority_; }

  std::error_code error() const noexcept override {
    std::lock_guard lock(mutex_);
    return error_;
  }

  void begin_capture() override {
    if (capturing_) {
      throw std::system_error(make_error_code(errc::capture_invalid), "cobatch: the stream is already capturing");
    }
    capturing_ = true;
    captured_.clear();
  }
  graph end_capture() override {
    if (!capturing_) {
      throw std::system_error(make_error_code(errc::capture_invalid), "cobatch: end_capture without begin_capture");
    }
    capturing_ = false;
    return graph(std::make_unique<host_graph>(std::exchange(captured_, {})));
  }
  bool capturing() const noexcept override { return capturing_; }

  coro::completion_reactor& reactor() const noexcept override { return *reactor_; }
  void* native_handle() const noexcept override { return const_cast<host_stream*>(this); }

  void push(stream_op op) {
    bool wake = false;
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(std::move(op));
      wake = worker_waiting_;
    }
    // A busy worker finds the entry without a wake-up system call.
    if (wake) cv_.notify_one();
  }

 private:
  void fail(std::error_code ec) {
    std::lock_guard lock(mutex_);
    if (!error_) error_ = ec;
  }
  std::error_code current_error() const {
    std::lock_guard lock(mutex_);
    return error_;
  }

  void run_one_work(detail::unique_function& fn) {
    if (current_error()) return;  // sticky: later work is skipped, as after a failed kernel
    try {
      fn();
    } catch (const std::system_error& e) {
      fail(e.code());
    } catch (...) {
      fail(make_error_code(errc::operation_failed));
    }
  }
  void signal(host_fence& f) {
    f.signal(current_error());
    reactor_->kick();
  }
  void join(const host_fence& f) {
    if (auto ec = f.wait()) fail(ec);  // a join on failed work inherits the failure
  }

  void run() {
    for (;;) {
      stream_op op;
      {
        std::unique_lock lock(mutex_);
        worker_waiting_ = true;
        cv_.wait(lock, [&] { return !queue_.empty(); });
        worker_waiting_ = false;
        op = std::move(queue_.front());
        queue_.pop_front();
      }
      if (std::holds_alternative<run_stop>(op)) return;
      if (auto* w = std::get_if<run_work>(&op)) {
        run_one_work(w->fn);
      } else if (auto* s = std::get_if<run_signal>(&op)) {
        signal(*s->fence);
      } else if (auto* j = std::get_if<run_wait>(&op)) {
        join(*j->fence);
      } else if (auto* g = std::get_if<run_graph>(&op)) {
        std::size_t r = 0;
        std::size_t q = 0;
        for (const auto& node : *g->nodes) {
          if (auto* wn = std::get_if<work_node>(&node)) {
            run_one_work(*wn->fn);
          } else if (std::holds_alternative<record_node>(node)) {
            signal(*g->records[r++]);
          } else if (const auto& f = g->waits[q++]) {
            join(*f);
          }
        }
      }
    }
  }

  coro::completion_reactor* reactor_;
  stream_priority priority_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<stream_op> queue_;
  bool worker_waiting_ = false;  // guarded by mutex_
  std::error_code error_;
  bool capturing_ = false;  // host-side state: touched only by the thread driving the stream
  std::vector<graph_node> captured_;
  std::thread worker_;
};

void host_graph_exec::launch(detail::stream_impl& s) {
  auto* hs = dynamic_cast<host_stream*>(&s);
  if (hs == nullptr) {
    throw std::system_error(make_error_code(errc::invalid_argument),
                            "cobatch: a host graph can only be launched on a host stream");
  }
  if (hs->capturing()) {
    throw std::system_error(make_error_code(errc::capture_invalid),
                            "cobatch: launching a graph into a capture is not supported by the host backend");
  }
  run_graph op{nodes_, {}, {}};
  for (const auto& node : *nodes_) {
    if (auto* r = std::get_if<record_node>(&node)) {
      auto f = std::make_shared<host_fence>();
      r->event->set(f);
      op.records.push_back(std::move(f));
    } else if (auto* w = std::get_if<wait_node>(&node)) {
      op.waits.push_back(w->event->current_fence());
    }
  }
  // The whole replay is one queue entry: that is where a graph saves host time.
  hs->push(std::move(op));
}

}  // namespace

struct buffer::accounting {
  std::mutex mutex;
  std::size_t budget = 0;
  std::size_t in_use = 0;
};

buffer::buffer(std::unique_ptr<std::byte[]> data, std::size_t size, std::shared_ptr<accounting> owner) noexcept
    : data_(std::move(data)), size_(size), owner_(std::move(owner)) {}
buffer::buffer(buffer&& other) noexcept
    : data_(std::move(other.data_)), size_(std::exchange(other.size_, 0)), owner_(std::move(other.owner_)) {}
buffer& buffer::operator=(buffer&& other) noexcept {
  if (this != &other) {
    buffer dying(std::move(*this));
    data_ = std::move(other.data_);
    size_ = std::exchange(other.size_, 0);
    owner_ = std::move(other.owner_);
  }
  return *this;
}
buffer::~buffer() {
  if (owner_) {
    std::lock_guard lock(owner_->mutex);
    owner_->in_use -= size_;
  }
}

host_device::host_device(coro::completion_reactor& reactor, device_options options)
    : reactor_(&reactor), options_(std::move(options)), accounting_(std::make_shared<buffer::accounting>()) {
  accounting_->budget = options_.memory_budget;
}

host_device::~host_device() = default;

memory_info host_device::memory() const {
  std::lock_guard lock(accounting_->mutex);
  return {accounting_->budget, accounting_->budget - accounting_->in_use, accounting_->in_use};
}

stream host_device::make_stream(stream_options options) {
  return stream(std::make_unique<host_stream>(*reactor_, options.priority));
}

event host_device::make_event() { return event(std::make_unique<host_event>(*reactor_)); }

buffer host_device::allocate(std::size_t bytes) {
  {
    std::lock_guard lock(accounting_->mutex);
    if (bytes > accounting_->budget - accounting_->in_use) {
      throw std::system_error(make_error_code(errc::out_of_memory),
                              "cobatch: host device allocation of " + std::to_string(bytes) + " bytes exceeds the " +
                                  std::to_string(accounting_->budget - accounting_->in_use) + " bytes left");
    }
    accounting_->in_use += bytes;
  }
  return buffer(std::make_unique<std::byte[]>(bytes), bytes, accounting_);
}

}  // namespace cobatch::gpu::host
