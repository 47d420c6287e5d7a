// CUDA backend: device, event pool, fences, events, streams and graphs.
#include "cobatch/gpu/cuda/cuda_device.hpp"

#include "cobatch/gpu/cuda/device_census.hpp"
#include "cobatch/gpu/cuda/graph_update.hpp"
#include "cuda_stream.hpp"

#include <algorithm>
#include <exception>
#include <string>
#include <utility>

namespace cobatch::gpu::cuda {
namespace detail {

// --- event pool --------------------------------------------------------------

event_pool::~event_pool() {
  for (auto e : free_) cudaEventDestroy(e);  // never throws; a failure here has no one to tell
}

std::shared_ptr<CUevent_st> event_pool::acquire() {
  cudaEvent_t e = nullptr;
  {
    std::lock_guard lock(mutex_);
    if (!free_.empty()) {
      e = free_.back();
      free_.pop_back();
    }
  }
  if (e == nullptr) {
    set_device(ordinal_);
    COBATCH_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  // The deleter holds the pool, so an event outliving its device still has
  // somewhere to go back to.
  return std::shared_ptr<CUevent_st>(e, event_release{event_release::mode::to_pool, shared_from_this()});
}

std::size_t event_pool::idle() const {
  std::lock_guard lock(mutex_);
  return free_.size();
}

void event_pool::give_back(cudaEvent_t e) noexcept {
  // A pooled event may be re-recorded at once: a record replaces the previous
  // one, and whoever held the old one let go.
  std::lock_guard lock(mutex_);
  try {
    free_.push_back(e);
  } catch (...) {
    cudaEventDestroy(e);
  }
}

// --- fences and events -------------------------------------------------------

cudaError_t query_event(cudaEvent_t e) noexcept {
  cudaError_t status = cudaSuccess;
  {
    relaxed_capture_mode relaxed;
    status = cudaEventQuery(e);
  }
  // cudaEventQuery reports asynchronous failures of earlier work (a fault in
  // a kernel) and cudaErrorNotReady as its own result, and leaves them as the
  // thread's last error, which the querying thread (a poller) does not own.
  if (status != cudaSuccess) cudaGetLastError();
  return status;
}

std::error_code record_scope::failure() const noexcept {
  if (health) {
    if (auto ec = health->error_up_to(ticket)) return ec;
  }
  for (const auto& u : upstreams) {
    if (auto ec = u.health->error_up_to(u.ticket)) return ec;
  }
  for (const auto& g : guards) {
    if (auto ec = g.guard->cut_short()) return ec;
  }
  return {};
}

coro::fence_status event_fence::query() const noexcept {
  if (auto ec = scope_.failure()) return coro::fence_status::failed(ec);
  const cudaError_t status = query_event(event_.get());
  if (status == cudaSuccess) {
    // A host function before the record may have failed while the event
    // completed: the scope is final now, look once more.
    if (auto ec = scope_.failure()) return coro::fence_status::failed(ec);
    return coro::fence_status::ready();
  }
  if (status != cudaErrorNotReady) return coro::fence_status::failed(make_cuda_error_code(status));
  for (const auto& g : scope_.guards) {
    if (auto ec = g.guard->check()) return coro::fence_status::failed(ec);
  }
  return coro::fence_status::pending();
}

fence cuda_event::current() const {
  std::lock_guard lock(mutex_);
  return fence(std::make_shared<event_fence>(event_, scope_));
}

void cuda_event::recorded(record_scope scope) {
  std::lock_guard lock(mutex_);
  scope_ = std::move(scope);
}

record_scope cuda_event::scope() const {
  std::lock_guard lock(mutex_);
  return scope_;
}

// --- capture notes -------------------------------------------------------------

namespace {
struct capture_notes {
  std::mutex mutex;
  std::vector<std::pair<unsigned long long, std::shared_ptr<const launch_note>>> notes;
};
capture_notes& notes_in_progress() {
  static capture_notes instance;
  return instance;
}
}  // namespace

void add_capture_note(unsigned long long capture_id, std::shared_ptr<const launch_note> note) {
  auto& n = notes_in_progress();
  std::lock_guard lock(n.mutex);
  n.notes.emplace_back(capture_id, std::move(note));
}

std::vector<std::shared_ptr<const launch_note>> take_capture_notes(unsigned long long capture_id) {
  auto& n = notes_in_progress();
  std::vector<std::shared_ptr<const launch_note>> out;
  std::lock_guard lock(n.mutex);
  for (auto& [id, note] : n.notes) {
    if (id == capture_id) out.push_back(std::move(note));
  }
  std::erase_if(n.notes, [&](const auto& entry) { return entry.first == capture_id; });
  return out;
}

// --- graphs ------------------------------------------------------------------

class cuda_graph_exec final : public gpu::detail::graph_exec_impl {
 public:
  // Keeps the graph it was made or last updated from: host functions of an
  // update's graph are owned by that graph (user objects are not carried over
  // by cudaGraphExecUpdate), and the executable runs them from now on.
  cuda_graph_exec(cudaGraphExec_t exec, std::size_t nodes, std::shared_ptr<CUgraph_st> source,
                  std::vector<std::shared_ptr<const launch_note>> notes)
      : exec_(exec), nodes_(nodes), source_(std::move(source)), notes_(std::move(notes)) {}
  ~cuda_graph_exec() override {
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
  }
  void launch(gpu::detail::stream_impl& s) override {
    auto& cs = as_cuda(s);
    cs.issue();
    COBATCH_CUDA_CHECK(cudaGraphLaunch(exec_, cs.get()));
    for (const auto& note : notes_) note->on_launch(cs);
  }
  std::size_t node_count() const noexcept override { return nodes_; }

  graph_update_result update(const std::shared_ptr<CUgraph_st>& source, std::size_t nodes,
                             const std::vector<std::shared_ptr<const launch_note>>& notes) {
    cudaGraph_t g = source.get();
    cudaGraphExecUpdateResultInfo info{};
    if (cudaGraphExecUpdate(exec_, g, &info) == cudaSuccess) {
      nodes_ = nodes;
      source_ = source;
      notes_ = notes;
      return graph_update_result::updated_in_place;
    }
    // Topology or node kinds changed: the failure is expected, not an error.
    cudaGetLastError();
    cudaGraphExec_t fresh = nullptr;
    COBATCH_CUDA_CHECK(cudaGraphInstantiate(&fresh, g, 0));
    cudaGraphExecDestroy(exec_);
    exec_ = fresh;
    nodes_ = nodes;
    source_ = source;
    notes_ = notes;
    return graph_update_result::reinstantiated;
  }

 private:
  cudaGraphExec_t exec_;
  std::size_t nodes_;
  std::shared_ptr<CUgraph_st> source_;
  std::vector<std::shared_ptr<const launch_note>> notes_;
};

class cuda_graph final : public gpu::detail::graph_impl {
 public:
  cuda_graph(cudaGraph_t g, std::vector<std::shared_ptr<const launch_note>> notes)
      : graph_(g, [](cudaGraph_t x) { cudaGraphDestroy(x); }), notes_(std::move(notes)) {
    std::size_t n = 0;
    COBATCH_CUDA_CHECK(cudaGraphGetNodes(g, nullptr, &n));
    nodes_ = n;
  }
  std::unique_ptr<gpu::detail::graph_exec_impl> instantiate() const override {
    cudaGraphExec_t exec = nullptr;
    COBATCH_CUDA_CHECK(cudaGraphInstantiate(&exec, graph_.get(), 0));
    return std::make_unique<cuda_graph_exec>(exec, nodes_, graph_, notes_);
  }
  std::size_t node_count() const noexcept override { return nodes_; }
  const std::shared_ptr<CUgraph_st>& shared() const noexcept { return graph_; }
  const std::vector<std::shared_ptr<const launch_note>>& notes() const noexcept { return notes_; }

 private:
  std::shared_ptr<CUgraph_st> graph_;
  std::vector<std::shared_ptr<const launch_note>> notes_;
  std::size_t nodes_ = 0;
};

// --- streams -----------------------------------------------------------------

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

cuda_stream::~cuda_stream() {
  if (handle_.get_deleter() != &destroy_stream || handle_.get() == nullptr) return;
  // The owning handle promises that destruction waits for the enqueued work
  // (cudaStreamDestroy alone returns at once and lets it finish later): a
  // host function still queued may refer to what the caller is about to
  // free. An open capture is ended and dropped first: a capturing stream
  // cannot be synchronized.
  if (capturing()) {
    cudaGraph_t g = nullptr;
    if (cudaStreamEndCapture(get(), &g) == cudaSuccess && g != nullptr) cudaGraphDestroy(g);
    cudaGetLastError();
  }
  {
    relaxed_capture_mode relaxed;
    if (cudaStreamSynchronize(get()) != cudaSuccess) cudaGetLastError();
  }
  handle_.reset();
  health_->retire();
}

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
  return graph(std::make_unique<cuda_graph>(g, std::move(notes)));
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
  live_guards();
  guards_.push_back({std::move(guard), std::move(done)});
}

cudaStream_t cuda_stream::release() noexcept {
  if (handle_.get_deleter() != &destroy_stream) return nullptr;
  return handle_.release();
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

void set_device(int ordinal) {
  int current = -1;
  COBATCH_CUDA_CHECK(cudaGetDevice(&current));
  if (current != ordinal) COBATCH_CUDA_CHECK(cudaSetDevice(ordinal));
}

void note_launch(stream_ref s, int status) noexcept {
  if (status == cudaSuccess) return;
  cudaGetLastError();  // a refused launch is not sticky; do not let it surface elsewhere
  if (auto* c = dynamic_cast<cuda_stream*>(&s.impl())) c->fail(make_cuda_error_code(status));
}

void event_release::operator()(CUevent_st* e) const noexcept {
  switch (how) {
    case mode::to_pool: pool->give_back(e); break;
    case mode::destroy: cudaEventDestroy(e); break;
    case mode::leave: break;
  }
}

void destroy_stream(CUstream_st* s) noexcept { cudaStreamDestroy(s); }
void leave_stream(CUstream_st*) noexcept {}

}  // namespace detail

// --- device --------------------------------------------------------------------

cuda_device::cuda_device(coro::completion_reactor& reactor, int ordinal) : state_(std::make_shared<detail::device_state>()) {
  int count = 0;
  COBATCH_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (ordinal < 0 || ordinal >= count) check_cuda(cudaErrorInvalidDevice, "cuda_device: ordinal out of range");
  COBATCH_CUDA_CHECK(cudaSetDevice(ordinal));
  cudaDeviceProp props{};
  COBATCH_CUDA_CHECK(cudaGetDeviceProperties(&props, ordinal));
  state_->ordinal = ordinal;
  state_->reactor = &reactor;
  state_->name = props.name;
  COBATCH_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&state_->least_priority, &state_->greatest_priority));
  state_->events = std::make_shared<detail::event_pool>(ordinal);
}

cuda_device::~cuda_device() = default;

int cuda_device::count() {
  const auto census = take_device_census();
  if (census.error) throw cuda_error(census.error, "cudaGetDeviceCount", std::source_location::current());
  return census.count;
}

std::string cuda_device::name() const { return state_->name; }
int cuda_device::ordinal() const noexcept { return state_->ordinal; }
coro::completion_reactor& cuda_device::reactor() const noexcept { return *state_->reactor; }
void cuda_device::make_current() const { detail::set_device(state_->ordinal); }

memory_info cuda_device::memory() const {
  make_current();
  std::size_t free = 0, total = 0;
  COBATCH_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  // in_use counts every allocation on the device, this process's and others'.
  return {total, free, total - free};
}

stream cuda_device::make_stream(stream_options options) {
  make_current();
  int priority = state_->least_priority;
  switch (options.priority) {
    case stream_priority::low: priority = state_->least_priority; break;
    case stream_priority::normal: priority = (state_->least_priority + state_->greatest_priority) / 2; break;
    case stream_priority::high: priority = state_->greatest_priority; break;
  }
  cudaStream_t s = nullptr;
  COBATCH_CUDA_CHECK(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, priority));
  return stream(std::make_unique<detail::cuda_stream>(state_, detail::stream_handle(s, detail::destroy_stream),
                                                      options.priority));
}

event cuda_device::make_event() { return make_event(event_timing::disabled); }

event cuda_device::make_event(event_timing timing) {
  if (timing == event_timing::disabled) {
    return event(std::make_unique<detail::cuda_event>(state_, state_->events->acquire()));
  }
  make_current();
  cudaEvent_t e = nullptr;
  COBATCH_CUDA_CHECK(cudaEventCreate(&e));
  return event(std::make_unique<detail::cuda_event>(state_, std::shared_ptr<CUevent_st>(e, detail::event_release{detail::event_release::mode::destroy, nullptr})));
}

stream cuda_device::from_native_handle(CUstream_st* native, stream_options options) {
  if (native == nullptr) {
    throw std::system_error(make_error_code(errc::invalid_argument),
                            "cobatch: from_native_handle(nullptr): wrap a created stream, not the legacy default stream");
  }
  return stream(std::make_unique<detail::cuda_stream>(state_, detail::stream_handle(native, detail::leave_stream),
                                                      options.priority));
}

event cuda_device::from_native_handle(CUevent_st* native) {
  if (native == nullptr) {
    throw std::system_error(make_error_code(errc::invalid_argument), "cobatch: from_native_handle(nullptr) event");
  }
  return event(std::make_unique<detail::cuda_event>(state_, std::shared_ptr<CUevent_st>(native, detail::event_release{detail::event_release::mode::leave, nullptr})));
}

CUstream_st* release_native(stream&& s) {
  auto impl = s.release();
  auto* c = impl ? dynamic_cast<detail::cuda_stream*>(impl.get()) : nullptr;
  if (c == nullptr) {
    s = stream(std::move(impl));
    throw std::system_error(make_error_code(errc::invalid_argument), "cobatch: release_native: not a CUDA stream");
  }
  CUstream_st* native = c->release();
  if (native == nullptr) {
    s = stream(std::move(impl));
    throw std::system_error(make_error_code(errc::invalid_argument),
                            "cobatch: release_native: the stream was borrowed (from_native_handle), not owned");
  }
  return native;
}

CUevent_st* release_native(event&& e) {
  auto impl = e.release();
  auto* c = impl ? dynamic_cast<detail::cuda_event*>(impl.get()) : nullptr;
  auto* how = c ? std::get_deleter<detail::event_release>(c->shared()) : nullptr;
  if (how == nullptr || how->how == detail::event_release::mode::leave) {
    e = event(std::move(impl));
    throw std::system_error(make_error_code(errc::invalid_argument),
                            "cobatch: release_native: not an event this device owns");
  }
  // Fences made from the event still refer to it: they stay valid as long as
  // the caller keeps the event alive.
  how->how = detail::event_release::mode::leave;
  return c->get();
}

float elapsed_ms(event_ref start, event_ref stop) {
  float ms = 0;
  COBATCH_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start.native_handle()),
                                          static_cast<cudaEvent_t>(stop.native_handle())));
  return ms;
}

graph_update_result update(graph_exec& exec, const graph& g) {
  auto* ce = dynamic_cast<detail::cuda_graph_exec*>(exec.impl());
  auto* cg = dynamic_cast<detail::cuda_graph*>(g.impl());
  if (ce == nullptr || cg == nullptr) {
    throw std::system_error(make_error_code(errc::invalid_argument),
                            "cobatch: update needs an instantiated graph and a graph of the CUDA backend");
  }
  return ce->update(cg->shared(), cg->node_count(), cg->notes());
}

}  // namespace cobatch::gpu::cuda
