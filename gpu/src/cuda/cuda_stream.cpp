// Streams: host functions in stream order (also inside graphs), records and
// joins that carry their scope, fences, capture, and destruction that waits.
#include "cuda_stream.hpp"

#include <algorithm>
#include <exception>
#include <utility>

namespace cobatch::gpu::cuda::detail {

namespace {

/// A host function in flight: what to run and whom to tell if it throws.
struct host_call {
  gpu::detail::unique_function fn;
  std::shared_ptr<stream_health> health;
  std::uint64_t ticket;

  void run() noexcept {
    // Runs on a CUDA driver thread, which must not call CUDA and must not
    // block: the stream waits for it. Only the failure is recorded here.
    try {
      fn();
    } catch (const std::system_error& e) {
      health->fail(e.code(), ticket);
    } catch (...) {
      health->fail(make_error_code(errc::operation_failed), ticket);
    }
  }
};

void CUDART_CB run_once(void* p) {
  std::unique_ptr<host_call> call(static_cast<host_call*>(p));
  call->run();
}
// In a graph the same call runs at every replay; the graph owns it through a
// user object and deletes it when the last graph using it is destroyed.
void CUDART_CB run_replayed(void* p) { static_cast<host_call*>(p)->run(); }
void CUDART_CB delete_call(void* p) { delete static_cast<host_call*>(p); }

}  // namespace

void cuda_stream::enqueue(gpu::detail::unique_function fn) {
  auto call = std::make_unique<host_call>(host_call{std::move(fn), health_, health_->issue()});
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  cudaGraph_t g = nullptr;
  COBATCH_CUDA_CHECK(cudaStreamGetCaptureInfo(get(), &capture, nullptr, &g));
  if (capture == cudaStreamCaptureStatusActive) {
    cudaUserObject_t owner = nullptr;
    COBATCH_CUDA_CHECK(cudaUserObjectCreate(&owner, call.get(), delete_call, 1, cudaUserObjectNoDestructorSync));
    auto* raw = call.release();  // the user object owns it now
    COBATCH_CUDA_CHECK(cudaGraphRetainUserObject(g, owner, 1, cudaGraphUserObjectMove));
    COBATCH_CUDA_CHECK(cudaLaunchHostFunc(get(), run_replayed, raw));
    return;
  }
  COBATCH_CUDA_CHECK(cudaLaunchHostFunc(get(), run_once, call.get()));
  call.release();  // run_once deletes it
}

std::vector<guard_entry> cuda_stream::live_guards() {
  // A guard is needed until the work it watches has completed; one whose
  // work was cut short stays, failing every later fence of the stream, as
  // later work may consume what it never produced.
  std::erase_if(guards_, [](const guard_entry& g) {
    return query_event(g.done.get()) == cudaSuccess && !g.guard->cut_short();
  });
  return guards_;
}

std::vector<upstream> cuda_stream::live_upstreams() {
  // A stream that is gone and finished can add no failure: if it had none up
  // to the joined point, the entry says nothing any more.
  std::erase_if(upstreams_, [](const upstream& u) { return u.health->retired() && !u.health->error_up_to(u.ticket); });
  return upstreams_;
}

record_scope cuda_stream::scope() {
  const bool in_capture = capturing();
  record_scope s{health_, health_->issued(), live_upstreams(),
                 in_capture ? std::vector<guard_entry>{} : live_guards()};
  // Events recorded on one stream complete in order, and the stream's own
  // failures land in their place, so a record may claim its position
  // (docs/completion_reactor.md). Not inside a capture: the record happens
  // when the graph is replayed, at a place not known here. Not when a
  // failure is already known (a refused launch, an upstream that failed):
  // the fence fails at once, ahead of earlier pending records, and must not
  // be held behind them.
  if (!in_capture && !s.failure()) s.order = {order_stream_, ++positions_};
  return s;
}

void cuda_stream::inherit(const record_scope& from) {
  auto add = [this](const std::shared_ptr<const stream_health>& h, std::uint64_t ticket) {
    if (!h || h == health_) return;
    for (auto& u : upstreams_) {
      if (u.health == h) {
        // Failures up to a later point include those up to an earlier one.
        u.ticket = std::max(u.ticket, ticket);
        return;
      }
    }
    upstreams_.push_back({h, ticket});
  };
  add(from.health, from.ticket);
  for (const auto& u : from.upstreams) add(u.health, u.ticket);
  for (const auto& g : from.guards) {
    const bool known = std::any_of(guards_.begin(), guards_.end(), [&](const guard_entry& mine) { return mine.guard == g.guard; });
    if (!known) guards_.push_back(g);
  }
}

void cuda_stream::record(gpu::detail::event_impl& e) {
  auto& ev = as_cuda(e);
  auto covered = scope();
  COBATCH_CUDA_CHECK(cudaEventRecord(ev.get(), get()));
  ev.recorded(std::move(covered));
}

void cuda_stream::wait(const gpu::detail::event_impl& e) {
  const auto& ev = as_cuda(e);
  COBATCH_CUDA_CHECK(cudaStreamWaitEvent(get(), ev.get(), 0));
  // The join is on the device; the failures that CUDA does not attach to
  // the stream (host functions, refused launches, aborted collectives) must
  // cross it too, or a compute stream that consumed a failed collective's
  // output would report success.
  inherit(ev.scope());
}

fence cuda_stream::mark() {
  if (capturing()) {
    throw std::system_error(make_error_code(errc::capture_invalid),
                            "cobatch: cannot wait for a stream while it is being captured");
  }
  auto ev = device_->events->acquire();
  auto covered = scope();
  COBATCH_CUDA_CHECK(cudaEventRecord(ev.get(), get()));
  return fence(std::make_shared<event_fence>(std::move(ev), std::move(covered)));
}

std::error_code cuda_stream::error() const noexcept {
  if (auto ec = health_->first_error()) return ec;
  for (const auto& u : upstreams_) {
    if (auto ec = u.health->error_up_to(u.ticket)) return ec;
  }
  for (const auto& g : guards_) {
    if (auto ec = g.guard->cut_short()) return ec;
  }
  // A capturing stream has nothing running to ask about, and querying it
  // would end its capture.
  if (capturing()) return {};
  cudaError_t status = cudaSuccess;
  {
    relaxed_capture_mode relaxed;
    status = cudaStreamQuery(get());
  }
  if (status == cudaSuccess) return {};
  cudaGetLastError();
  if (status == cudaErrorNotReady) return {};
  return make_cuda_error_code(status);
}

unsigned long long cuda_stream::capture_id() const {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  unsigned long long id = 0;
  COBATCH_CUDA_CHECK(cudaStreamGetCaptureInfo(get(), &status, &id));
  // An invalidated capture still has its id: its notes must be taken too.
  return status == cudaStreamCaptureStatusNone ? 0 : id;
}

void cuda_stream::finish() noexcept {
  // A capturing stream cannot be synchronized; its capture is dropped.
  if (capturing()) {
    cudaGraph_t g = nullptr;
    if (cudaStreamEndCapture(get(), &g) == cudaSuccess && g != nullptr) cudaGraphDestroy(g);
    cudaGetLastError();
  }
  relaxed_capture_mode relaxed;
  if (cudaStreamSynchronize(get()) != cudaSuccess) cudaGetLastError();
}

owned_cuda_stream::~owned_cuda_stream() {
  if (handle_ == nullptr) return;  // handed over by release_native_handle()
  // gpu::stream promises that destruction waits for the enqueued work
  // (cudaStreamDestroy alone returns at once and lets it finish later): a
  // host function still queued may refer to what the caller frees next.
  finish();
  cudaStreamDestroy(handle_);
  health_->retire();
}

void* owned_cuda_stream::release_native_handle() { return std::exchange(handle_, nullptr); }

void cuda_stream::begin_capture() {
  // Thread-local mode: the capturing thread may not make calls that are
  // unsafe during capture (cudaMalloc, synchronizing calls), which would
  // otherwise be left out of the graph silently; other threads (another
  // device's loop, a reactor thread polling events) are not restricted, as
  // they would be in global mode.
  COBATCH_CUDA_CHECK(cudaStreamBeginCapture(get(), cudaStreamCaptureModeThreadLocal));
}

graph cuda_stream::end_capture() {
  const unsigned long long id = capture_id();
  cudaGraph_t g = nullptr;
  const cudaError_t status = cudaStreamEndCapture(get(), &g);
  auto notes = take_capture_notes(id);
  if (status != cudaSuccess) {
    if (g != nullptr) cudaGraphDestroy(g);
    cudaGetLastError();
    check_cuda(status, "cudaStreamEndCapture (was every joined stream joined back before the end?)");
  }
  return make_graph(g, std::move(notes));
}

bool cuda_stream::capturing() const noexcept {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(get(), &status) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return status == cudaStreamCaptureStatusActive;
}

void cuda_stream::attach(std::shared_ptr<const fence_guard> guard, std::shared_ptr<CUevent_st> done) {
  // A fence still prunes fully (scope()) before it copies the list.
  if (prune_.due(guards_.size())) {
    live_guards();
    prune_.pruned(guards_.size());
  }
  guards_.push_back({std::move(guard), std::move(done)});
}

cuda_stream& as_cuda(gpu::detail::stream_impl& s) {
  auto* c = dynamic_cast<cuda_stream*>(&s);
  if (c == nullptr) {
    throw std::system_error(make_error_code(errc::invalid_argument), "cobatch: expected a stream of the CUDA backend");
  }
  return *c;
}

cuda_event& as_cuda(gpu::detail::event_impl& e) {
  auto* c = dynamic_cast<cuda_event*>(&e);
  if (c == nullptr) {
    throw std::system_error(make_error_code(errc::invalid_argument), "cobatch: expected an event of the CUDA backend");
  }
  return *c;
}

const cuda_event& as_cuda(const gpu::detail::event_impl& e) { return as_cuda(const_cast<gpu::detail::event_impl&>(e)); }

void note_launch(stream_ref s, int status) noexcept {
  if (status == cudaSuccess) return;
  cudaGetLastError();  // a refused launch is not sticky; do not let it surface elsewhere
  if (auto* c = dynamic_cast<cuda_stream*>(&s.impl())) c->fail(make_cuda_error_code(status));
}

}  // namespace cobatch::gpu::cuda::detail
