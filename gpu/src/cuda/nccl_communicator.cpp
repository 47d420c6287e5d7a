// NCCL communicators: non-blocking creation and calls, completion through
// events polled together with the communicator's asynchronous error, abort on
// timeout, error or request.
#include "cobatch/gpu/cuda/nccl_communicator.hpp"

#include "cobatch/gpu/cuda/buffer.hpp"
#include "cobatch/gpu/error.hpp"
#include "cuda_stream.hpp"
#include "nccl_fault.hpp"
#include "prune_schedule.hpp"

#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <optional>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

namespace cobatch::gpu::cuda::nccl {
namespace {

// The NCCL category spells out these codes (error.cpp needs no nccl.h).
static_assert(ncclSuccess == 0 && ncclUnhandledCudaError == 1 && ncclSystemError == 2 && ncclInternalError == 3 &&
              ncclInvalidArgument == 4 && ncclInvalidUsage == 5 && ncclRemoteError == 6 && ncclInProgress == 7);
static_assert(sizeof(ncclUniqueId) == unique_id_size);

using clock = std::chrono::steady_clock;

ncclDataType_t to_nccl(data_type t) {
  switch (t) {
    case data_type::f32: return ncclFloat32;
    case data_type::f64: return ncclFloat64;
    case data_type::i32: return ncclInt32;
    case data_type::i64: return ncclInt64;
    case data_type::u8: return ncclUint8;
    case data_type::bf16: return ncclBfloat16;
    case data_type::f16: return ncclFloat16;
  }
  throw std::system_error(make_error_code(errc::invalid_argument), "cobatch: unknown data_type");
}

ncclRedOp_t to_nccl(reduce_op op) {
  switch (op) {
    case reduce_op::sum: return ncclSum;
    case reduce_op::prod: return ncclProd;
    case reduce_op::min: return ncclMin;
    case reduce_op::max: return ncclMax;
  }
  throw std::system_error(make_error_code(errc::invalid_argument), "cobatch: unknown reduce_op");
}

[[noreturn]] void invalid(const std::string& what) {
  throw std::system_error(make_error_code(errc::invalid_argument), "cobatch: nccl: " + what);
}

clock::time_point deadline_after(std::chrono::milliseconds timeout) {
  return timeout.count() > 0 ? clock::now() + timeout : clock::time_point::max();
}

class collective_guard;
class comm_state;

thread_local std::error_code injected_enqueue_failure;

/// One thread per process, as PyTorch's NCCL watchdog: it checks every
/// unfinished collective's communicator and deadline even when no one polls
/// (a rank that stopped waiting must still abort, or its peers hang), and it
/// finalizes and destroys communicators, which can block for as long as a
/// peer takes: never on a loop thread, and bounded by the timeout.
class nccl_service {
 public:
  static nccl_service& instance() {
    static nccl_service service;
    return service;
  }
  void watch(const std::shared_ptr<comm_state>& c);
  /// Takes over a communicator whose last owner let go.
  void retire(ncclComm_t comm, std::chrono::milliseconds timeout, std::optional<allocation> scratch);
  /// Blocks until every communicator retired so far is released.
  void drain() {
    std::unique_lock lock(mutex_);
    drained_.wait(lock, [&] { return retirees_.empty() && finishing_ == 0; });
  }

 private:
  struct retiree {
    ncclComm_t comm;
    std::chrono::milliseconds timeout;
    std::optional<allocation> scratch;
  };

  nccl_service() : thread_([this] { run(); }) {}
  ~nccl_service() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  void run();
  static void finish(retiree& r) noexcept;

  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable drained_;
  int finishing_ = 0;
  bool stop_ = false;
  std::vector<std::weak_ptr<comm_state>> watched_;
  std::deque<retiree> retirees_;
  std::thread thread_;
};

/// A communicator and what guards it. Shared by the communicator handle and
/// every fence watching one of its collectives.
class comm_state {
 public:
  comm_state(ncclComm_t comm, int rank, int size, int device, communicator_options options)
      : comm_(comm), rank_(rank), size_(size), device_(device), options_(options) {}
  comm_state(const comm_state&) = delete;
  comm_state& operator=(const comm_state&) = delete;

  ~comm_state() {
    // An aborted communicator's resources are gone already (ncclCommAbort
    // frees them); a healthy one is finalized on the service thread.
    if (aborted_ || comm_ == nullptr) return;
    nccl_service::instance().retire(comm_, options_.timeout, std::move(scratch_));
  }

  /// One-element device memory for barriers, made on first use and freed
  /// with the communicator (cudaFree synchronizes: not on a loop thread).
  void* scratch() {
    if (!scratch_) {
      detail::set_device(device_);
      scratch_.emplace(sizeof(std::int32_t), memory_kind::device);
    }
    return scratch_->data();
  }

  /// For the service thread: checks each unfinished collective's
  /// asynchronous error and deadline.
  void sweep() noexcept;

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }
  int device() const noexcept { return device_; }
  ncclComm_t get() const noexcept { return comm_; }
  const communicator_options& options() const noexcept { return options_; }
  std::mutex& mutex() noexcept { return mutex_; }

  /// Why the communicator is unusable, if it is.
  std::error_code failure() const noexcept {
    if (!failed_.load(std::memory_order_acquire)) return {};
    std::lock_guard lock(failure_mutex_);
    return failure_;
  }

  /// Aborts once, for `why`; later calls keep the first reason.
  void abort(std::error_code why) noexcept {
    if (!set_failure(why)) return;
    std::lock_guard lock(mutex_);
    abort_locked();
  }

  /// Remembers a collective until it is known to have completed: an abort
  /// marks those still running as cut short before their kernels are made
  /// to return.
  void track(const std::shared_ptr<collective_guard>& g);

  /// For the issuing thread, which holds mutex().
  void abort_locked(std::error_code why) noexcept {
    set_failure(why);
    abort_locked();
  }

  /// Polls the asynchronous error from any thread (the reactor's poller).
  /// Skips a round when the issuing thread holds the communicator.
  std::error_code poll() noexcept {
    if (auto ec = failure()) return ec;
    std::unique_lock lock(mutex_, std::try_to_lock);
    if (!lock.owns_lock() || aborted_) return failure();
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess) state = r;
    if (state != ncclSuccess && state != ncclInProgress) {
      abort_locked(make_nccl_error_code(state));
      return failure();
    }
    return {};
  }

  /// With mutex() held: waits until the calls made so far are enqueued
  /// (the asynchronous error leaves ncclInProgress). Throws on an error or
  /// the deadline, after aborting.
  void wait_issued(const char* what) {
    const auto deadline = deadline_after(options_.timeout);
    for (;;) {
      if (auto ec = failure()) {
        throw std::system_error(make_error_code(errc::communicator_aborted),
                                std::string("cobatch: nccl: ") + what + ": communicator aborted (" + ec.message() + ")");
      }
      ncclResult_t state = ncclSuccess;
      const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
      if (r != ncclSuccess) state = r;
      if (auto injected = std::exchange(injected_enqueue_failure, {})) {
        abort_locked(injected);
        throw std::system_error(injected, std::string("cobatch: nccl: ") + what + " (injected failure)");
      }
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) {
        abort_locked(make_nccl_error_code(state));
        throw cuda_error(make_nccl_error_code(state), what, std::source_location::current());
      }
      if (clock::now() > deadline) {
        abort_locked(make_error_code(errc::timeout));
        throw std::system_error(make_error_code(errc::timeout), std::string("cobatch: nccl: ") + what +
                                                                    " was not enqueued within " +
                                                                    std::to_string(options_.timeout.count()) +
                                                                    " ms; communicator aborted");
      }
      std::this_thread::yield();
    }
  }

 private:
  bool set_failure(std::error_code why) noexcept {
    std::lock_guard lock(failure_mutex_);
    if (failure_) return false;
    failure_ = why;
    failed_.store(true, std::memory_order_release);
    return true;
  }
  void abort_locked() noexcept;

  ncclComm_t comm_;
  int rank_;
  int size_;
  int device_;
  communicator_options options_;
  std::mutex mutex_;  // the issuing thread, the poller and abort take turns on comm_
  std::mutex live_mutex_;  // guards live_
  std::vector<std::weak_ptr<collective_guard>> live_;
  detail::prune_schedule prune_;  // when track() prunes live_
  std::optional<allocation> scratch_;
  bool aborted_ = false;
  std::atomic<bool> failed_{false};
  mutable std::mutex failure_mutex_;
  std::error_code failure_;
};

/// Watches one collective: its communicator's asynchronous error, an abort,
/// and its deadline. The deadline counts from when the collective started
/// on the device (its `started` event completed, as first seen by a poll or
/// the service thread), not from when it was issued: a collective queued
/// behind long compute on its stream is not late.
class collective_guard final : public detail::fence_guard {
 public:
  collective_guard(std::shared_ptr<comm_state> state, std::shared_ptr<CUevent_st> started,
                   std::shared_ptr<CUevent_st> done, std::chrono::milliseconds timeout)
      : state_(std::move(state)), started_(std::move(started)), done_(std::move(done)), timeout_(timeout) {
    if (!started_) started_at_.store(clock::now().time_since_epoch().count(), std::memory_order_relaxed);
  }
  std::error_code check() const noexcept override {
    if (auto ec = state_->poll()) return ec;
    if (timeout_.count() <= 0) return {};
    auto since = started_at_.load(std::memory_order_acquire);
    if (since == 0) {
      if (detail::query_event(started_.get()) != cudaSuccess) return {};
      since = clock::now().time_since_epoch().count();
      started_at_.store(since, std::memory_order_release);
    }
    if (clock::now() - clock::time_point(clock::duration(since)) > timeout_) {
      state_->abort(make_error_code(errc::timeout));
      return state_->failure();
    }
    return {};
  }
  std::error_code cut_short() const noexcept override {
    return cut_short_.load(std::memory_order_acquire) ? state_->failure() : std::error_code{};
  }
  bool finished() const noexcept { return detail::query_event(done_.get()) == cudaSuccess; }
  void mark_cut_short() noexcept { cut_short_.store(true, std::memory_order_release); }

 private:
  std::shared_ptr<comm_state> state_;
  std::shared_ptr<CUevent_st> started_;
  std::shared_ptr<CUevent_st> done_;
  std::chrono::milliseconds timeout_;
  mutable std::atomic<clock::rep> started_at_{0};
  std::atomic<bool> cut_short_{false};
};

void comm_state::sweep() noexcept {
  std::vector<std::shared_ptr<collective_guard>> unfinished;
  {
    std::lock_guard lock(live_mutex_);
    for (auto& w : live_) {
      if (auto g = w.lock(); g && !g->finished()) unfinished.push_back(std::move(g));
    }
  }
  for (auto& g : unfinished) {
    if (g->check()) return;  // aborted: every other collective is failed with it
  }
}

void nccl_service::watch(const std::shared_ptr<comm_state>& c) {
  std::lock_guard lock(mutex_);
  for (auto& w : watched_) {
    if (w.lock() == c) return;
  }
  watched_.push_back(c);
}

void nccl_service::retire(ncclComm_t comm, std::chrono::milliseconds timeout, std::optional<allocation> scratch) {
  {
    std::lock_guard lock(mutex_);
    retirees_.push_back({comm, timeout, std::move(scratch)});
  }
  wake_.notify_all();
}

void nccl_service::finish(retiree& r) noexcept {
  // Finalize flushes what is still queued; a peer that never completes it
  // must not hold this thread forever, so it is bounded like everything else.
  ncclResult_t res = ncclCommFinalize(r.comm);
  const auto deadline = deadline_after(r.timeout);
  while (res == ncclSuccess || res == ncclInProgress) {
    ncclResult_t state = ncclSuccess;
    if (ncclCommGetAsyncError(r.comm, &state) != ncclSuccess || state != ncclInProgress) {
      res = state;
      break;
    }
    if (clock::now() > deadline) {
      res = ncclInternalError;
      break;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  if (res == ncclSuccess) {
    ncclCommDestroy(r.comm);
  } else {
    ncclCommAbort(r.comm);
  }
  try {
    r.scratch.reset();
  } catch (...) {
  }
}

void nccl_service::run() {
  // The period bounds how late a deadline or a peer's failure is noticed
  // when nobody polls; polls see them at once.
  constexpr auto period = std::chrono::milliseconds(20);
  std::unique_lock lock(mutex_);
  for (;;) {
    while (!retirees_.empty()) {
      auto r = std::move(retirees_.front());
      retirees_.pop_front();
      ++finishing_;
      lock.unlock();
      finish(r);
      lock.lock();
      --finishing_;
    }
    drained_.notify_all();
    if (stop_) return;
    std::vector<std::shared_ptr<comm_state>> live;
    std::erase_if(watched_, [&](const std::weak_ptr<comm_state>& w) {
      auto c = w.lock();
      if (!c) return true;
      live.push_back(std::move(c));
      return false;
    });
    lock.unlock();
    for (auto& c : live) c->sweep();
    live.clear();  // may run a communicator's destructor, which takes the lock
    lock.lock();
    if (retirees_.empty() && !stop_) wake_.wait_for(lock, period);
  }
}

void comm_state::abort_locked() noexcept {
  if (aborted_ || comm_ == nullptr) return;
  aborted_ = true;
  {
    // Whatever has not completed by now never will, properly.
    std::lock_guard lock(live_mutex_);
    for (auto& w : live_) {
      if (auto g = w.lock(); g && !g->finished()) g->mark_cut_short();
    }
    live_.clear();
  }
  // Makes the communicator's kernels return, so the streams (and the events
  // behind every pending fence) move on.
  ncclCommAbort(comm_);
}

void comm_state::track(const std::shared_ptr<collective_guard>& g) {
  std::lock_guard lock(live_mutex_);
  if (prune_.due(live_.size())) {
    std::erase_if(live_, [](const std::weak_ptr<collective_guard>& w) {
      auto p = w.lock();
      return !p || p->finished();
    });
    prune_.pruned(live_.size());
  }
  live_.push_back(g);
}

/// Records the completion event of the calls just enqueued on `s` (after
/// `started`, recorded before them, if given) and attaches the guard that
/// watches them.
void watch(const std::shared_ptr<comm_state>& state, detail::cuda_stream& s, std::shared_ptr<CUevent_st> started) {
  auto done = s.device()->events->acquire();
  COBATCH_CUDA_CHECK(cudaEventRecord(done.get(), s.get()));
  auto guard = std::make_shared<collective_guard>(state, std::move(started), done, state->options().timeout);
  state->track(guard);
  nccl_service::instance().watch(state);
  s.attach(std::move(guard), std::move(done));
}

/// A collective captured into a graph: each launch of the graph is watched
/// like an eager call (its deadline counts from the launch), and a graph
/// whose communicator was aborted is not launched at all.
class captured_collective final : public detail::launch_note {
 public:
  explicit captured_collective(std::shared_ptr<comm_state> state) : state_(std::move(state)) {}
  std::error_code before_launch() const noexcept override { return state_->failure(); }
  void on_launch(detail::cuda_stream& s) const override { watch(state_, s, nullptr); }

 private:
  std::shared_ptr<comm_state> state_;
};

// Calls issued inside a group of this thread wait for the outermost group's
// end to be enqueued and watched.
struct grouped_call {
  std::shared_ptr<comm_state> state;
  detail::cuda_stream* stream;
  std::uint64_t ticket;
  std::shared_ptr<CUevent_st> started;  // null when captured
  unsigned long long capture = 0;
};

/// A group that did not issue: every collective in it fails, on every
/// stream it was issued on (their kernels, if enqueued, return early after
/// the abort, and their events complete without the data), and every
/// communicator in it is aborted, since the group's other ranks wait for
/// calls that will never come.
void fail_group(const std::vector<grouped_call>& calls, std::error_code ec) noexcept {
  for (const auto& c : calls) c.state->abort(ec);
  for (const auto& c : calls) {
    auto why = c.state->failure();
    c.stream->fail_at(why ? why : ec, c.ticket);
  }
}
thread_local int group_depth = 0;
thread_local std::vector<grouped_call> grouped;

void start_group() {
  COBATCH_NCCL_CHECK(ncclGroupStart());
  ++group_depth;
}

void end_group() {
  if (group_depth == 0) invalid("group end without a group start");
  --group_depth;
  const ncclResult_t r = ncclGroupEnd();
  if (group_depth > 0) {
    if (r != ncclSuccess && r != ncclInProgress) check_nccl(r, "ncclGroupEnd");
    return;
  }
  auto calls = std::move(grouped);
  grouped.clear();
  try {
    if (r != ncclSuccess && r != ncclInProgress) check_nccl(r, "ncclGroupEnd");
    // Every communicator of the group must have enqueued its part before any
    // completion event is recorded behind it.
    std::vector<comm_state*> waited;
    for (auto& c : calls) {
      if (std::find(waited.begin(), waited.end(), c.state.get()) != waited.end()) continue;
      waited.push_back(c.state.get());
      std::lock_guard lock(c.state->mutex());
      c.state->wait_issued("ncclGroupEnd");
    }
  } catch (const std::system_error& e) {
    fail_group(calls, e.code());
    throw;
  } catch (...) {
    fail_group(calls, make_error_code(errc::operation_failed));
    throw;
  }
  for (std::size_t i = 0; i < calls.size(); ++i) {
    const auto& c = calls[i];
    const bool seen = std::any_of(calls.begin(), calls.begin() + static_cast<std::ptrdiff_t>(i),
                                  [&](const grouped_call& o) { return o.state == c.state && o.stream == c.stream; });
    if (seen) continue;
    if (c.capture != 0) {
      detail::add_capture_note(c.capture, std::make_shared<captured_collective>(c.state));
    } else {
      watch(c.state, *c.stream, c.started);
    }
  }
}

class nccl_comm final : public gpu::detail::communicator_impl {
 public:
  nccl_comm(std::shared_ptr<comm_state> state) : state_(std::move(state)) {}

  int rank() const noexcept override { return state_->rank(); }
  int size() const noexcept override { return state_->size(); }

  void all_gather(const void* send, void* recv, std::size_t count, data_type t, gpu::detail::stream_impl& s) override {
    need(send, recv, count, "all_gather");
    issue(s, "ncclAllGather", [&](ncclComm_t c, cudaStream_t cs) {
      return ncclAllGather(send, recv, count, to_nccl(t), c, cs);
    });
  }
  void all_reduce(const void* send, void* recv, std::size_t count, data_type t, reduce_op op,
                  gpu::detail::stream_impl& s) override {
    need(send, recv, count, "all_reduce");
    issue(s, "ncclAllReduce", [&](ncclComm_t c, cudaStream_t cs) {
      return ncclAllReduce(send, recv, count, to_nccl(t), to_nccl(op), c, cs);
    });
  }
  void reduce_scatter(const void* send, void* recv, std::size_t recv_count, data_type t, reduce_op op,
                      gpu::detail::stream_impl& s) override {
    need(send, recv, recv_count, "reduce_scatter");
    issue(s, "ncclReduceScatter", [&](ncclComm_t c, cudaStream_t cs) {
      return ncclReduceScatter(send, recv, recv_count, to_nccl(t), to_nccl(op), c, cs);
    });
  }
  void group_start() override { start_group(); }
  void group_end() override { end_group(); }
  void send(const void* buf, std::size_t count, data_type t, int peer, gpu::detail::stream_impl& s) override {
    grouped_only("send");
    check_peer(peer);
    need(buf, buf, count, "send");
    issue(s, "ncclSend", [&](ncclComm_t c, cudaStream_t cs) { return ncclSend(buf, count, to_nccl(t), peer, c, cs); });
  }
  void recv(void* buf, std::size_t count, data_type t, int peer, gpu::detail::stream_impl& s) override {
    grouped_only("recv");
    check_peer(peer);
    need(buf, buf, count, "recv");
    issue(s, "ncclRecv", [&](ncclComm_t c, cudaStream_t cs) { return ncclRecv(buf, count, to_nccl(t), peer, c, cs); });
  }
  void all_to_all(const void* send, void* recv, std::size_t count, data_type t, gpu::detail::stream_impl& s) override {
    grouped_only("all_to_all");
    need(send, recv, count, "all_to_all");
    const std::size_t slice = count * size_of(t);
    const auto world = static_cast<std::size_t>(size());
    const auto* in = static_cast<const std::byte*>(send);
    auto* out = static_cast<std::byte*>(recv);
    if (count > 0 && in < out + slice * world && out < in + slice * world) invalid("all_to_all buffers overlap");
    issue(s, "ncclSend/ncclRecv (all_to_all)", [&](ncclComm_t c, cudaStream_t cs) {
      for (int r = 0; r < size(); ++r) {
        const auto offset = slice * static_cast<std::size_t>(r);
        ncclResult_t res = ncclSend(in + offset, count, to_nccl(t), r, c, cs);
        if (res != ncclSuccess && res != ncclInProgress) return res;
        res = ncclRecv(out + offset, count, to_nccl(t), r, c, cs);
        if (res != ncclSuccess && res != ncclInProgress) return res;
      }
      return ncclSuccess;
    });
  }
  void barrier(gpu::detail::stream_impl& s) override {
    // NCCL has no barrier; a one-element all-reduce makes every rank wait for
    // the others on the device.
    auto& cs = detail::as_cuda(s);
    void* p = state_->scratch();
    issue(cs, "ncclAllReduce (barrier)", [&](ncclComm_t c, cudaStream_t stream) {
      return ncclAllReduce(p, p, 1, ncclInt32, ncclSum, c, stream);
    });
  }
  void abort() noexcept override { state_->abort(make_error_code(errc::communicator_aborted)); }

 private:
  template <typename Call>
  void issue(gpu::detail::stream_impl& s, const char* what, Call&& call) {
    auto& cs = detail::as_cuda(s);
    std::unique_lock lock(state_->mutex());
    if (auto ec = state_->failure()) {
      throw std::system_error(make_error_code(errc::communicator_aborted),
                              std::string("cobatch: nccl: ") + what + " on an aborted communicator (" + ec.message() +
                                  ")");
    }
    detail::set_device(state_->device());
    // Inside a capture the call becomes a graph node: there is nothing to
    // watch now, and each launch of the graph is watched instead.
    const unsigned long long capture = cs.capture_id();
    std::shared_ptr<CUevent_st> started;
    if (capture == 0) {
      started = cs.device()->events->acquire();
      COBATCH_CUDA_CHECK(cudaEventRecord(started.get(), cs.get()));
    }
    const std::uint64_t ticket = cs.issue();
    const ncclResult_t r = call(state_->get(), cs.get());
    if (r != ncclSuccess && r != ncclInProgress) {
      // Argument errors are reported at once and leave the communicator
      // usable; anything else means it can no longer be trusted.
      if (r != ncclInvalidArgument && r != ncclInvalidUsage) state_->abort_locked(make_nccl_error_code(r));
      check_nccl(r, what);
    }
    if (group_depth > 0) {
      grouped.push_back({state_, &cs, ticket, std::move(started), capture});
      return;
    }
    try {
      // ncclSuccess from a non-blocking communicator means enqueued; only
      // ncclInProgress leaves the enqueue to finish in the background. (An
      // injected failure, for the failure tests, takes the waiting path.)
      if (r == ncclInProgress || injected_enqueue_failure) state_->wait_issued(what);
    } catch (const std::system_error& e) {
      // Accepted, perhaps enqueued, then failed: the stream must say so, or
      // a wait on it would succeed once the aborted kernel returns.
      cs.fail_at(e.code(), ticket);
      throw;
    }
    lock.unlock();
    if (capture != 0) {
      detail::add_capture_note(capture, std::make_shared<captured_collective>(state_));
    } else {
      watch(state_, cs, std::move(started));
    }
  }

  void need(const void* a, const void* b, std::size_t count, const char* what) const {
    if (count > 0 && (a == nullptr || b == nullptr)) invalid(std::string(what) + " with a null buffer");
  }
  void check_peer(int peer) const {
    if (peer < 0 || peer >= size()) {
      invalid("peer " + std::to_string(peer) + " is not a rank of a communicator of size " + std::to_string(size()));
    }
  }
  static void grouped_only(const char* what) {
    if (group_depth == 0) invalid(std::string(what) + " outside a group (take a group_guard)");
  }

  std::shared_ptr<comm_state> state_;
};

ncclConfig_t non_blocking_config() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  return config;
}

ncclUniqueId to_nccl(const unique_id& id) {
  ncclUniqueId u;
  std::memcpy(&u, id.data(), sizeof u);
  return u;
}

void check_world(int rank, int world_size) {
  if (world_size < 1) invalid("world size must be at least 1, got " + std::to_string(world_size));
  if (rank < 0 || rank >= world_size) {
    invalid("rank " + std::to_string(rank) + " is outside [0, " + std::to_string(world_size) + ")");
  }
}

}  // namespace

unique_id make_unique_id() {
  ncclUniqueId u;
  COBATCH_NCCL_CHECK(ncclGetUniqueId(&u));
  unique_id id;
  std::memcpy(id.data(), &u, sizeof u);
  return id;
}

communicator make_communicator(cuda_device& dev, int rank, int world_size, const unique_id& id,
                               communicator_options options) {
  check_world(rank, world_size);
  dev.make_current();
  auto config = non_blocking_config();
  ncclComm_t comm = nullptr;
  const ncclResult_t r = ncclCommInitRankConfig(&comm, world_size, to_nccl(id), rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    if (comm != nullptr) ncclCommAbort(comm);
    check_nccl(r, "ncclCommInitRankConfig");
  }
  auto state = std::make_shared<comm_state>(comm, rank, world_size, dev.ordinal(), options);
  {
    std::lock_guard lock(state->mutex());
    state->wait_issued("ncclCommInitRankConfig");  // aborts and throws on error or timeout
  }
  return communicator(std::make_unique<nccl_comm>(std::move(state)));
}

communicator bootstrap(cuda_device& dev, const launch_environment& env, communicator_options options,
                       rendezvous_options rendezvous) {
  check_world(env.rank, env.world_size);
  auto bytes = exchange_id(env, unique_id_size, [] {
    auto id = make_unique_id();
    return std::vector<std::byte>(id.begin(), id.end());
  }, rendezvous);
  unique_id id;
  std::copy(bytes.begin(), bytes.end(), id.begin());
  return make_communicator(dev, env.rank, env.world_size, id, options);
}

std::vector<communicator> make_local_communicators(const std::vector<cuda_device*>& devices,
                                                   communicator_options options) {
  if (devices.empty()) invalid("make_local_communicators needs at least one device");
  for (auto* d : devices) {
    if (d == nullptr) invalid("make_local_communicators: null device");
  }
  const int n = static_cast<int>(devices.size());
  const auto uid = to_nccl(make_unique_id());
  std::vector<ncclComm_t> comms(devices.size(), nullptr);
  std::vector<ncclConfig_t> configs(devices.size(), non_blocking_config());
  // One group, so that each rank's initialization can wait for the others
  // without this thread waiting in between.
  COBATCH_NCCL_CHECK(ncclGroupStart());
  ncclResult_t first_error = ncclSuccess;
  for (int r = 0; r < n; ++r) {
    devices[static_cast<std::size_t>(r)]->make_current();
    const ncclResult_t res = ncclCommInitRankConfig(&comms[static_cast<std::size_t>(r)], n, uid, r,
                                                    &configs[static_cast<std::size_t>(r)]);
    if (res != ncclSuccess && res != ncclInProgress && first_error == ncclSuccess) first_error = res;
  }
  const ncclResult_t end = ncclGroupEnd();
  if (first_error == ncclSuccess && end != ncclSuccess && end != ncclInProgress) first_error = end;
  std::vector<std::shared_ptr<comm_state>> states;
  for (int r = 0; r < n; ++r) {
    states.push_back(std::make_shared<comm_state>(comms[static_cast<std::size_t>(r)], r, n,
                                                  devices[static_cast<std::size_t>(r)]->ordinal(), options));
  }
  if (first_error != ncclSuccess) {
    for (auto& s : states) s->abort(make_nccl_error_code(first_error));
    check_nccl(first_error, "ncclCommInitRankConfig (single process)");
  }
  for (auto& s : states) {
    std::lock_guard lock(s->mutex());
    s->wait_issued("ncclCommInitRankConfig (single process)");
  }
  std::vector<communicator> out;
  for (auto& s : states) out.emplace_back(std::make_unique<nccl_comm>(std::move(s)));
  return out;
}

void wait_for_retired_communicators() { nccl_service::instance().drain(); }

namespace fault {
void fail_next_enqueue_wait(std::error_code ec) noexcept { injected_enqueue_failure = ec; }
}  // namespace fault

thread_group_guard::thread_group_guard() { start_group(); }

thread_group_guard::~thread_group_guard() {
  if (!open_) return;
  open_ = false;
  try {
    end_group();
  } catch (...) {
    // Destructors never throw; the grouped calls' streams report the failure.
  }
}

void thread_group_guard::end() {
  if (!open_) return;
  open_ = false;
  end_group();
}

}  // namespace cobatch::gpu::cuda::nccl
