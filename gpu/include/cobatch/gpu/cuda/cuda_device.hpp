// cuda_device: the CUDA backend of gpu::device. Streams with priorities,
// events from a per-device pool, CUDA graphs through stream capture, and
// streams and events made elsewhere (a framework's current stream, an event
// from another library): adopted, as owning handles, or borrowed, as _ref
// handles. Ownership is the type's: a gpu::stream or gpu::event always owns
// its CUDA object (release() hands it back), a stream_ref or event_ref never
// does.
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

#include <cstddef>
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
struct borrowed_handles;
}  // namespace detail

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

  /// Adopts `native`, a stream made elsewhere: the returned stream owns it
  /// and, like any owning stream, waits for its work and destroys it at the
  /// end, unless release() hands it back first.
  stream from_native_handle(CUstream_st* native, stream_options options = {});
  /// Adopts `native`: it is destroyed with the returned event, unless
  /// release() hands it back.
  event from_native_handle(CUevent_st* native);
  /// The legacy default stream is no stream to adopt or borrow.
  stream from_native_handle(std::nullptr_t, stream_options = {}) = delete;

  /// Uses `native` without owning it (a framework's current stream). The
  /// device keeps what the backend tracks for it (host-side failures, joins,
  /// collectives' guards), one record per native stream, so every borrow of
  /// the same stream sees the same failures; `native` must outlive the use
  /// of the ref, and forget(native) must come before it is destroyed (CUDA
  /// may hand its address to a new stream).
  stream_ref borrow(CUstream_st* native, stream_options options = {});
  /// As above, for an event made elsewhere; the device never destroys it.
  event_ref borrow(CUevent_st* native);
  stream_ref borrow(std::nullptr_t, stream_options = {}) = delete;
  /// Drops what the device keeps for a borrowed stream or event; refs to it
  /// must no longer be used. A handle never borrowed is ignored.
  void forget(CUstream_st* native) noexcept;
  void forget(CUevent_st* native) noexcept;

  /// Makes this device current on the calling thread.
  void make_current() const;

 private:
  std::shared_ptr<detail::device_state> state_;
  std::unique_ptr<detail::borrowed_handles> borrowed_;
};

/// The CUDA stream or event behind a handle of this backend.
inline CUstream_st* native(stream_ref s) noexcept { return static_cast<CUstream_st*>(s.native_handle()); }
inline CUevent_st* native(event_ref e) noexcept { return static_cast<CUevent_st*>(e.native_handle()); }

/// Milliseconds between two completed records of timed events
/// (make_event(event_timing::enabled)). Throws cuda_error otherwise.
float elapsed_ms(event_ref start, event_ref stop);

}  // namespace cobatch::gpu::cuda
