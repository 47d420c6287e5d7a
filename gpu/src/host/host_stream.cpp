// Host backend: streams (one worker thread each) and their capture side.
#include "host_stream.hpp"

#include "cobatch/gpu/error.hpp"

#include <algorithm>
#include <system_error>

namespace cobatch::gpu::host {

host_stream::host_stream(coro::completion_reactor& reactor, stream_priority priority)
    : reactor_(&reactor), priority_(priority), worker_([this] { run(); }) {}

host_stream::~host_stream() {
  if (owned_session_) {
    // Destroyed mid-capture: end the capture so no stream keeps a dangling
    // reference to it.
    for (std::size_t l = 0; l < owned_session_->lane_count(); ++l) owned_session_->stream_of(l)->leave_capture();
    std::erase(live_sessions(), owned_session_.get());
  }
  push(run_stop{});
  worker_.join();
}

capture_session* host_stream::capture_of_caller(const char* what) const {
  capture_session* session = session_.load(std::memory_order_acquire);
  if (session != nullptr && capture_thread_.load(std::memory_order_acquire) != std::this_thread::get_id()) {
    throw std::system_error(make_error_code(errc::capture_invalid),
                            std::string("cobatch: host stream ") + what +
                                " from another thread than the one capturing the stream");
  }
  return session;
}

void host_stream::enter_capture(capture_session* session, std::size_t lane_index) {
  lane_ = lane_index;
  capture_thread_.store(std::this_thread::get_id(), std::memory_order_release);
  session_.store(session, std::memory_order_release);
}

void host_stream::leave_capture() noexcept { session_.store(nullptr, std::memory_order_release); }

void host_stream::enqueue(detail::unique_function fn) {
  if (auto* session = capture_of_caller("enqueue")) {
    session->nodes(lane_).push_back(work_node{std::make_shared<detail::unique_function>(std::move(fn))});
    return;
  }
  push(run_work{std::move(fn)});
}

void host_stream::record(detail::event_impl& e) {
  auto& ev = as_host(e);
  if (auto* session = capture_of_caller("record")) {
    const auto marker = session->new_marker();
    session->nodes(lane_).push_back(record_node{ev.slot(), marker});
    session->note_record(ev.slot().get(), marker);
    return;
  }
  auto f = std::make_shared<host_fence>();
  push_marker(f);
  ev.set(std::move(f));
}

void host_stream::wait(const detail::event_impl& e) {
  auto& ev = as_host(e);
  // An event recorded inside a capture in progress: this stream joins that
  // capture (if it is not in it yet) and the wait becomes an internal edge.
  capture_session* own = capture_of_caller("wait");
  if (auto* session = active_session_of(ev)) {
    if (own == nullptr) {
      own = session;
      enter_capture(session, session->join(this));
    }
    if (own == session) {
      own->nodes(lane_).push_back(wait_node{ev.slot(), *session->marker_of(ev.slot().get()), true});
      return;
    }
  }
  if (own != nullptr) {
    own->nodes(lane_).push_back(wait_node{ev.slot(), 0, false});
    return;
  }
  if (auto f = ev.current_fence()) push(run_wait{std::move(f)});
}

fence host_stream::mark() {
  if (capture_of_caller("mark")) {
    throw std::system_error(make_error_code(errc::capture_invalid),
                            "cobatch: cannot wait for a stream while it is being captured");
  }
  auto f = std::make_shared<host_fence>();
  push_marker(f);
  return fence(std::move(f));
}

std::error_code host_stream::error() const noexcept {
  std::lock_guard lock(mutex_);
  return error_;
}

void host_stream::begin_capture() {
  if (capture_of_caller("begin_capture")) {
    throw std::system_error(make_error_code(errc::capture_invalid), "cobatch: the stream is already capturing");
  }
  owned_session_ = std::make_unique<capture_session>(this);
  live_sessions().push_back(owned_session_.get());
  enter_capture(owned_session_.get(), 0);
}

graph host_stream::end_capture() {
  capture_session* current = capture_of_caller("end_capture");
  if (!owned_session_) {
    throw std::system_error(make_error_code(errc::capture_invalid),
                            current ? "cobatch: end_capture must be called on the stream that began the capture"
                                    : "cobatch: end_capture without begin_capture");
  }
  auto session = std::move(owned_session_);
  // The capture ends whether or not it is valid, so no stream stays stuck in it.
  for (std::size_t l = 0; l < session->lane_count(); ++l) session->stream_of(l)->leave_capture();
  std::erase(live_sessions(), session.get());
  session->check_joined();
  return graph(std::make_unique<host_graph>(session->take(), *reactor_));
}

// The worker signals markers in queue order and a failure is sticky, so no
// later marker leaves pending before an earlier one: markers may claim their
// place (coro::fence_order). The position is taken under the lock that queues
// the marker, so it is the queue's order even with several recording threads.
void host_stream::push_marker(const std::shared_ptr<host_fence>& f) {
  bool wake = false;
  {
    std::lock_guard lock(mutex_);
    f->set_order({order_stream_, ++positions_});
    queue_.push_back(run_signal{f});
    wake = worker_waiting_;
  }
  if (wake) cv_.notify_one();
}

void host_stream::push(stream_op op) {
  bool wake = false;
  {
    std::lock_guard lock(mutex_);
    queue_.push_back(std::move(op));
    wake = worker_waiting_;
  }
  // A busy worker finds the entry without a wake-up system call.
  if (wake) cv_.notify_one();
}

// Captures in progress, to let a wait find the capture an event belongs to.
// Capture is host-side bookkeeping done by the thread that drives the
// streams (as CUDA's thread-local capture mode), so no lock is taken.
std::vector<capture_session*>& host_stream::live_sessions() {
  thread_local std::vector<capture_session*> sessions;
  return sessions;
}

capture_session* host_stream::active_session_of(host_event& ev) {
  for (auto* s : live_sessions()) {
    if (s->marker_of(ev.slot().get())) return s;
  }
  return nullptr;
}

void host_stream::fail(std::error_code ec) {
  std::lock_guard lock(mutex_);
  if (!error_) error_ = ec;
}

std::error_code host_stream::current_error() const {
  std::lock_guard lock(mutex_);
  return error_;
}

void host_stream::run_one_work(detail::unique_function& fn) {
  if (current_error()) return;  // sticky: later work is skipped, as after a failed kernel
  try {
    fn();
  } catch (const std::system_error& e) {
    fail(e.code());
  } catch (...) {
    fail(make_error_code(errc::operation_failed));
  }
}

void host_stream::signal(host_fence& f) {
  if (f.signal(current_error())) reactor_->kick();
}

void host_stream::join(const host_fence* f) {
  if (f == nullptr) return;
  if (auto ec = f->wait()) fail(ec);  // a join on failed work inherits the failure
}

void host_stream::run_lane(const run_graph& g) {
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

void host_stream::run() {
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

}  // namespace cobatch::gpu::host
