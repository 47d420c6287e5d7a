// Host backend: fences, events, streams (one worker thread each) and graphs.
#include "cobatch/gpu/error.hpp"
#include "cobatch/gpu/host/host_device.hpp"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <variant>
#include <vector>

namespace cobatch::gpu::host {
namespace {

class host_fence final : public detail::fence_impl {
 public:
  coro::fence_status query() const noexcept override {
    // A fence that is polled wants a kick when it is signalled; one that is
    // never polled (most records: their waits are joins between streams)
    // must not wake a sleeping poller for nothing. seq_cst on both sides: the
    // poller either sees the signal or the signaller sees the poll.
    if (!polled_.load(std::memory_order_relaxed)) polled_.store(true, std::memory_order_seq_cst);
    switch (state_.load(std::memory_order_seq_cst)) {
      case ready: return coro::fence_status::ready();
      case failed: return coro::fence_status::failed(error_);
      default: return coro::fence_status::pending();
    }
  }
  /// Returns whether anyone has polled the fence, i.e. whether a sleeping
  /// poller should be woken.
  bool signal(std::error_code ec) noexcept {
    error_ = ec;
    state_.store(ec ? failed : ready, std::memory_order_seq_cst);
    state_.notify_all();
    return polled_.load(std::memory_order_seq_cst);
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
  mutable std::atomic<bool> polled_{false};
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

// --- Graph capture ---------------------------------------------------------
//
// As in CUDA, capture follows events across streams: a stream that is not
// capturing and waits on an event recorded inside a capture joins it as a new
// lane; a record inside the capture followed by a wait inside the capture is an
// internal dependency. The origin stream ends the capture; every other lane
// must have been joined back (the origin waited on its last record).

class capture_session;

struct work_node {
  std::shared_ptr<detail::unique_function> fn;
};
struct record_node {
  host_event* event;  // may be waited on from outside after a replay
  std::size_t marker;
};
struct wait_node {
  host_event* event;  // external: the event's fence at launch time
  std::size_t marker;  // internal when < markers; else external
  bool internal;
};
using graph_node = std::variant<work_node, record_node, wait_node>;
using lane = std::vector<graph_node>;

struct graph_body {
  std::vector<lane> lanes;  // lane 0 runs on the launch stream
  std::size_t markers = 0;
  std::size_t nodes = 0;
};

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
struct launch_fences {
  std::vector<std::shared_ptr<host_fence>> markers;   // one per record, fresh per launch
  std::vector<std::shared_ptr<host_fence>> external;  // one per external wait, in lane order
};
struct run_graph {
  std::shared_ptr<const graph_body> body;
  std::size_t lane_index;
  std::shared_ptr<const launch_fences> fences;
  std::size_t first_external;  // index into fences->external for this lane
};
struct run_stop {};
using stream_op = std::variant<run_work, run_signal, run_wait, run_graph, run_stop>;

class host_stream;

class host_graph_exec final : public detail::graph_exec_impl {
 public:
  host_graph_exec(std::shared_ptr<const graph_body> body, coro::completion_reactor& reactor);
  void launch(detail::stream_impl& s) override;
  std::size_t node_count() const noexcept override { return body_->nodes; }

 private:
  std::shared_ptr<const graph_body> body_;
  std::vector<std::unique_ptr<host_stream>> side_lanes_;  // run lanes 1..n of each replay
};

class host_graph final : public detail::graph_impl {
 public:
  host_graph(graph_body body, coro::completion_reactor& reactor)
      : body_(std::make_shared<const graph_body>(std::move(body))), reactor_(&reactor) {}
  std::unique_ptr<detail::graph_exec_impl> instantiate() const override {
    return std::make_unique<host_graph_exec>(body_, *reactor_);
  }
  std::size_t node_count() const noexcept override { return body_->nodes; }

 private:
  std::shared_ptr<const graph_body> body_;
  coro::completion_reactor* reactor_;
};

class capture_session {
 public:
  explicit capture_session(host_stream* origin) { lanes_.push_back({origin, {}}); }

  std::size_t join(host_stream* s) {
    lanes_.push_back({s, {}});
    return lanes_.size() - 1;
  }
  lane& nodes(std::size_t lane_index) { return lanes_[lane_index].nodes; }
  std::size_t new_marker() { return markers_++; }
  std::size_t markers() const noexcept { return markers_; }

  /// Which session and marker an event was last recorded at inside a capture.
  void note_record(host_event* e, std::size_t marker) { recorded_[e] = marker; }
  std::optional<std::size_t> marker_of(host_event* e) const {
    auto it = recorded_.find(e);
    if (it == recorded_.end()) return std::nullopt;
    return it->second;
  }

  std::size_t lane_count() const noexcept { return lanes_.size(); }
  host_stream* stream_of(std::size_t lane_index) const noexcept { return lanes_[lane_index].stream; }

  /// Checks that every side lane ends with a record the origin lane waits on.
  void check_joined() const {
    for (std::size_t l = 1; l < lanes_.size(); ++l) {
      const auto& nodes = lanes_[l].nodes;
      const auto* last = nodes.empty() ? nullptr : std::get_if<record_node>(&nodes.back());
      bool joined = false;
      if (last != nullptr) {
        for (const auto& n : lanes_[0].nodes) {
          if (const auto* w = std::get_if<wait_node>(&n); w && w->internal && w->marker == last->marker) joined = true;
        }
      }
      if (!joined) {
        throw std::system_error(make_error_code(errc::capture_invalid),
                                "cobatch: capture ended with work on a joined stream (lane " + std::to_string(l) +
                                    ") that the origin stream never waited for");
      }
    }
  }

  graph_body take() {
    graph_body body;
    body.markers = markers_;
    for (auto& l : lanes_) {
      body.nodes += l.nodes.size();
      body.lanes.push_back(std::move(l.nodes));
    }
    return body;
  }

 private:
  struct lane_entry {
    host_stream* stream;
    lane nodes;
  };
  std::vector<lane_entry> lanes_;
  std::size_t markers_ = 0;
  std::map<host_event*, std::size_t> recorded_;
};

class host_stream final : public detail::stream_impl {
 public:
  host_stream(coro::completion_reactor& reactor, stream_priority priority)
      : reactor_(&reactor), priority_(priority), worker_([this] { run(); }) {}

  ~host_stream() override {
    if (owned_session_) {
      // Destroyed mid-capture: end the capture so no stream keeps a dangling
      // reference to it.
      for (std::size_t l = 0; l < owned_session_->lane_count(); ++l) owned_session_->stream_of(l)->session_ = nullptr;
      std::erase(live_sessions(), owned_session_.get());
    }
    push(run_stop{});
    worker_.join();
  }

  void enqueue(detail::unique_function fn) override {
    if (session_) {
      session_->nodes(lane_).push_back(work_node{std::make_shared<detail::unique_function>(std::move(fn))});
      return;
    }
    push(run_work{std::move(fn)});
  }

  void record(detail::event_impl& e) override {
    auto& ev = as_host(e);
    if (session_) {
      const auto marker = session_->new_marker();
      session_->nodes(lane_).push_back(record_node{&ev, marker});
      session_->note_record(&ev, marker);
      return;
    }
    auto f = std::make_shared<host_fence>();
    ev.set(f);
    push(run_signal{std::move(f)});
  }

  void wait(const detail::event_impl& e) override {
    auto& ev = as_host(e);
    // An event recorded inside a capture in progress: this stream joins that
    // capture (if it is not in it yet) and the wait becomes an internal edge.
    if (auto* session = active_session_of(ev)) {
      if (session_ == nullptr) {
        session_ = session;
        lane_ = session->join(this);
      }
      if (session_ == session) {
        session_->nodes(lane_).push_back(wait_node{&ev, *session->marker_of(&ev), true});
        return;
      }
    }
    if (session_) {
      session_->nodes(lane_).push_back(wait_node{&ev, 0, false});
      return;
    }
    if (auto f = ev.current_fence()) push(run_wait{std::move(f)});
  }

  fence mark() override {
    if (session_) {
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
    if (session_) {
      throw std::system_error(make_error_code(errc::capture_invalid), "cobatch: the stream is already capturing");
    }
    owned_session_ = std::make_unique<capture_session>(this);
    session_ = owned_session_.get();
    lane_ = 0;
    live_sessions().push_back(session_);
  }

  graph end_capture() override {
    if (!owned_session_) {
      throw std::system_error(make_error_code(errc::capture_invalid),
                              session_ ? "cobatch: end_capture must be called on the stream that began the capture"
                                       : "cobatch: end_capture without begin_capture");
    }
    auto session = std::move(owned_session_);
    // The capture ends whether or not it is valid, so no stream stays stuck in it.
    for (std::size_t l = 0; l < session->lane_count(); ++l) session->stream_of(l)->session_ = nullptr;
    std::erase(live_sessions(), session.get());
    session->check_joined();
    return graph(std::make_unique<host_graph>(session->take(), *reactor_));
  }

  bool capturing() const noexcept override { return session_ != nullptr; }

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
  // Captures in progress, to let a wait find the capture an event belongs to.
  // Capture is host-side bookkeeping done by the thread that drives the
  // streams (as CUDA's thread-local capture mode), so no lock is taken.
  static std::vector<capture_session*>& live_sessions() {
    thread_local std::vector<capture_session*> sessions;
    return sessions;
  }
  static capture_session* active_session_of(host_event& ev) {
    for (auto* s : live_sessions()) {
      if (s->marker_of(&ev)) return s;
    }
    return nullptr;
  }

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
    if (f.signal(current_error())) reactor_->kick();
  }
  void join(const host_fence* f) {
    if (f == nullptr) return;
    if (auto ec = f->wait()) fail(ec);  // a join on failed work inherits the failure
  }

  void run_lane(const run_graph& g) {
    std::size_t external = g.first_external;
    for (const auto& node : g.body->lanes[g.lane_index]) {
      if (const auto* w = std::get_if<work_node>(&node)) {
        run_one_work(*w->fn);
      } else if (const auto* r = std::get_if<record_node>(&node)) {
        signal(*g.fences->markers[r->marker]);
      } else if (const auto& wn = std::get<wait_node>(node); wn.internal) {
        join(g.fences->markers[wn.marker].get());
      } else {
        join(g.fences->external[external++].get());
      }
    }
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
      } else if (auto* sig = std::get_if<run_signal>(&op)) {
        signal(*sig->fence);
      } else if (auto* j = std::get_if<run_wait>(&op)) {
        join(j->fence.get());
      } else if (auto* g = std::get_if<run_graph>(&op)) {
        run_lane(*g);
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
  // Capture state: host-side, touched only by the thread driving the stream.
  std::unique_ptr<capture_session> owned_session_;  // set on the origin stream
  capture_session* session_ = nullptr;               // the capture this stream is in
  std::size_t lane_ = 0;
  std::thread worker_;
};

host_graph_exec::host_graph_exec(std::shared_ptr<const graph_body> body, coro::completion_reactor& reactor)
    : body_(std::move(body)) {
  for (std::size_t l = 1; l < body_->lanes.size(); ++l) {
    side_lanes_.push_back(std::make_unique<host_stream>(reactor, stream_priority::normal));
  }
}

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
  auto fences = std::make_shared<launch_fences>();
  fences->markers.reserve(body_->markers);
  for (std::size_t m = 0; m < body_->markers; ++m) fences->markers.push_back(std::make_shared<host_fence>());
  std::vector<std::size_t> first_external(body_->lanes.size(), 0);
  for (std::size_t l = 0; l < body_->lanes.size(); ++l) {
    first_external[l] = fences->external.size();
    for (const auto& node : body_->lanes[l]) {
      if (const auto* r = std::get_if<record_node>(&node)) {
        r->event->set(fences->markers[r->marker]);  // the host can await the event at once
      } else if (const auto* w = std::get_if<wait_node>(&node); w && !w->internal) {
        fences->external.push_back(w->event->current_fence());
      }
    }
  }
  std::shared_ptr<const launch_fences> shared = std::move(fences);
  // Each lane of the replay is one queue entry: that is where a graph saves
  // host time. Side lanes start only through their internal waits on lane 0.
  for (std::size_t l = 1; l < body_->lanes.size(); ++l) {
    side_lanes_[l - 1]->push(run_graph{body_, l, shared, first_external[l]});
  }
  hs->push(run_graph{body_, 0, shared, first_external[0]});
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
