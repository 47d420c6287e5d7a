// cuda_device: the CUDA backend of gpu::device. Streams with priorities,
// events from a per-device pool, CUDA graphs through stream capture, and
// non-owning wraps of streams and events made elsewhere (a framework's
// current stream, an event from another library).
//
// stream.enqueue(fn) runs fn as a CUDA host function (cudaLaunchHostFunc) on
// a thread the driver owns: fn, and the destruction of what it captures, must
// not call CUDA, and should be short (the stream waits for it). Completions
// reach coroutines by polling events through the reactor instead, so nothing
// resumes on a driver thread.
//
// Threads: a CUDA call acts on the calling thread's current device. Call
// make_current() on each thread that drives this device's streams (the
// constructor makes it current on the constructing thread).
#pragma once

#include "cobatch/coro/completion_reactor.hpp"
#include "cobatch/gpu/device.hpp"
#include "cobatch/gpu/event.hpp"
#include "cobatch/gpu/stream.hpp"

#include <memory>
#include <string>

// The runtime's handle types, declared as cuda_runtime.h does, so that this
// header needs no CUDA include: cudaStream_t is CUstream_st*, cudaEvent_t is
// CUevent_st*.
struct CUstream_st;
struct CUevent_st;

namespace cobatch::gpu::cuda {

namespace detail {
struct device_state;
}

/// Whether an event records timestamps. Timing costs every record a
/// timestamp write and makes cudaEventQuery slower, so it is off unless asked.
enum class event_timing { disabled, enabled };

class cuda_device final : public device {
 public:
  /// Opens device `ordinal`; throws cuda_error (cudaErrorInvalidDevice,
  /// cudaErrorNoDevice, ...) when it does not exist.
  explicit cuda_device(coro::completion_reactor& reactor, int ordinal = 0);
  ~cuda_device() override;
  cuda_device(const cuda_device&) = delete;
  cuda_device& operator=(const cuda_device&) = delete;

  /// Devices visible to this process: 0 where there is no device or no
  /// driver at all, so that callers can decide to skip; any other failure
  /// (a driver older than the runtime, ...) throws cuda_error naming it.
  /// take_device_census() (device_census.hpp) gives the same answer without
  /// throwing, with the reason for none.
  static int count();

  backend_kind backend() const noexcept override { return backend_kind::cuda; }
  std::string name() const override;
  int ordinal() const noexcept override;
  memory_info memory() const override;
  coro::completion_reactor& reactor() const noexcept override;

  /// A non-blocking stream (no implicit sync with the legacy default stream)
  /// whose priority maps onto the device's range: low = least, high =
  /// greatest, normal = the middle.
  stream make_stream(stream_options options = {}) override;
  /// An event from the device's pool, without timing.
  event make_event() override;
  event make_event(event_timing timing);

  /// Wraps `native` without owning it: destroying the returned stream leaves
  /// the CUDA stream alone. `native` must outlive the wrap.
  stream from_native_handle(CUstream_st* native, stream_options options = {});
  event from_native_handle(CUevent_st* native);

  /// Makes this device current on the calling thread.
  void make_current() const;

  const std::shared_ptr<detail::device_state>& state() const noexcept { return state_; }

 private:
  std::shared_ptr<detail::device_state> state_;
};

/// Takes the CUDA stream out of an owning handle made by a cuda_device; the
/// caller destroys it (cudaStreamDestroy). Throws errc::invalid_argument for a
/// stream of another backend or one that does not own its CUDA stream.
CUstream_st* release_native(stream&& s);
/// As above for events: a pooled event leaves the pool for good.
CUevent_st* release_native(event&& e);

/// The CUDA stream or event behind a handle of this backend.
inline CUstream_st* native(stream_ref s) noexcept { return static_cast<CUstream_st*>(s.native_handle()); }
inline CUevent_st* native(event_ref e) noexcept { return static_cast<CUevent_st*>(e.native_handle()); }

/// Milliseconds between two completed records of timed events
/// (make_event(event_timing::enabled)). Throws cuda_error otherwise.
float elapsed_ms(event_ref start, event_ref stop);

}  // namespace cobatch::gpu::cuda
