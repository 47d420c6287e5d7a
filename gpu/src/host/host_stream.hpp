// host_stream: an in-order queue of stream operations run by one worker
// thread (the "device"), and the recording side of stream capture.
#pragma once

#include "host_capture.hpp"
#include "host_event.hpp"
#include "host_fence.hpp"
#include "host_graph.hpp"

#include "cobatch/gpu/stream.hpp"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <variant>
#include <vector>

namespace cobatch::gpu::host {

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
  std::shared_ptr<const graph_body> body;
  std::size_t lane_index;
  std::shared_ptr<const launch_fences> fences;
  std::size_t first_external;  // index into fences->external for this lane
};
struct run_stop {};
using stream_op = std::variant<run_work, run_signal, run_wait, run_graph, run_stop>;

class host_stream final : public detail::stream_impl {
 public:
  host_stream(coro::completion_reactor& reactor, stream_priority priority);
  ~host_stream() override;

  void enqueue(detail::unique_function fn) override;
  void record(detail::event_impl& e) override;
  void wait(const detail::event_impl& e) override;
  fence mark() override;

  stream_priority priority() const noexcept override { return priority_; }
  std::error_code error() const noexcept override;

  void begin_capture() override;
  graph end_capture() override;
  bool capturing() const noexcept override { return session_.load(std::memory_order_acquire) != nullptr; }

  coro::completion_reactor& reactor() const noexcept override { return *reactor_; }
  void* native_handle() const noexcept override { return const_cast<host_stream*>(this); }

  void push(stream_op op);
  /// Queues the signal of a marker and gives it its place on the stream.
  void push_marker(const std::shared_ptr<host_fence>& f);

 private:
  static std::vector<capture_session*>& live_sessions();
  static capture_session* active_session_of(host_event& ev);

  /// The capture this stream is in, if any, checking that the caller is the
  /// thread that records it (capture is host-side bookkeeping of one thread,
  /// as CUDA's thread-local capture mode). Throws errc::capture_invalid
  /// naming `what` otherwise.
  capture_session* capture_of_caller(const char* what) const;
  void enter_capture(capture_session* session, std::size_t lane_index);
  void leave_capture() noexcept;

  void fail(std::error_code ec);
  std::error_code current_error() const;

  void run_one_work(detail::unique_function& fn);
  void signal(host_fence& f);
  void join(const host_fence* f);
  void run_lane(const run_graph& g);
  void run();

  coro::completion_reactor* reactor_;
  stream_priority priority_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<stream_op> queue_;
  bool worker_waiting_ = false;  // guarded by mutex_
  const std::uint64_t order_stream_ = coro::new_order_stream();
  std::uint64_t positions_ = 0;  // guarded by mutex_
  std::error_code error_;
  // The capture this stream is in, or null; read from any thread, so that an
  // operation from another thread while a capture records can be refused.
  std::atomic<capture_session*> session_{nullptr};
  // Which thread records the capture (valid while session_ is set).
  std::atomic<std::thread::id> capture_thread_{};
  // The rest of the capture state is touched only by the capturing thread.
  std::unique_ptr<capture_session> owned_session_;  // set on the origin stream
  std::size_t lane_ = 0;
  std::thread worker_;
};

}  // namespace cobatch::gpu::host
