// The CUDA device: properties, streams and events it makes, handles made
// elsewhere, timing.
#include "cobatch/gpu/cuda/cuda_device.hpp"

#include "cobatch/gpu/cuda/device_census.hpp"
#include "cuda_stream.hpp"

#include <mutex>
#include <string>
#include <system_error>
#include <unordered_map>
#include <utility>

namespace cobatch::gpu::cuda {
namespace detail {

void set_device(int ordinal) {
  int current = -1;
  COBATCH_CUDA_CHECK(cudaGetDevice(&current));
  if (current != ordinal) COBATCH_CUDA_CHECK(cudaSetDevice(ordinal));
}

/// The backend's state for streams and events made elsewhere, one per native
/// handle, so that every borrow of the same stream sees the same failures.
struct borrowed_handles {
  std::mutex mutex;
  std::unordered_map<CUstream_st*, std::unique_ptr<cuda_stream>> streams;
  std::unordered_map<CUevent_st*, std::unique_ptr<cuda_event>> events;
};
}  // namespace detail

cuda_device::cuda_device(coro::completion_reactor& reactor, int ordinal)
    : state_(std::make_shared<detail::device_state>()), borrowed_(std::make_unique<detail::borrowed_handles>()) {
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
  return stream(std::make_unique<detail::owned_cuda_stream>(state_, s, options.priority));
}

event cuda_device::make_event() { return make_event(event_timing::disabled); }

event cuda_device::make_event(event_timing timing) {
  if (timing == event_timing::disabled) {
    return event(std::make_unique<detail::cuda_event>(state_, state_->events->acquire()));
  }
  make_current();
  cudaEvent_t e = nullptr;
  COBATCH_CUDA_CHECK(cudaEventCreate(&e));
  return event(std::make_unique<detail::cuda_event>(
      state_, std::shared_ptr<CUevent_st>(e, detail::event_release{detail::event_release::mode::destroy, nullptr})));
}

namespace {
template <typename Handle>
void need_native(Handle* native, const char* what) {
  // A null cudaStream_t is the legacy default stream, a null event nothing:
  // neither is an object to adopt or borrow.
  if (native == nullptr) {
    throw std::system_error(make_error_code(errc::invalid_argument), std::string("cobatch: cuda_device::") + what +
                                                                         "(nullptr): give a created stream or event");
  }
}
}  // namespace

stream cuda_device::from_native_handle(CUstream_st* native, stream_options options) {
  need_native(native, "from_native_handle");
  return stream(std::make_unique<detail::owned_cuda_stream>(state_, native, options.priority));
}

event cuda_device::from_native_handle(CUevent_st* native) {
  need_native(native, "from_native_handle");
  return event(std::make_unique<detail::cuda_event>(
      state_, std::shared_ptr<CUevent_st>(native, detail::event_release{detail::event_release::mode::destroy, nullptr})));
}

stream_ref cuda_device::borrow(CUstream_st* native, stream_options options) {
  need_native(native, "borrow");
  std::lock_guard lock(borrowed_->mutex);
  auto& slot = borrowed_->streams[native];
  if (!slot) slot = std::make_unique<detail::cuda_stream>(state_, native, options.priority);
  return stream_ref(*slot);
}

event_ref cuda_device::borrow(CUevent_st* native) {
  need_native(native, "borrow");
  std::lock_guard lock(borrowed_->mutex);
  auto& slot = borrowed_->events[native];
  if (!slot) {
    slot = std::make_unique<detail::cuda_event>(
        state_, std::shared_ptr<CUevent_st>(native, detail::event_release{detail::event_release::mode::leave, nullptr}));
  }
  return event_ref(*slot);
}

void cuda_device::forget(CUstream_st* native) noexcept {
  std::unique_ptr<detail::cuda_stream> gone;
  std::lock_guard lock(borrowed_->mutex);
  if (auto it = borrowed_->streams.find(native); it != borrowed_->streams.end()) {
    gone = std::move(it->second);
    borrowed_->streams.erase(it);
  }
}

void cuda_device::forget(CUevent_st* native) noexcept {
  std::unique_ptr<detail::cuda_event> gone;
  std::lock_guard lock(borrowed_->mutex);
  if (auto it = borrowed_->events.find(native); it != borrowed_->events.end()) {
    gone = std::move(it->second);
    borrowed_->events.erase(it);
  }
}

float elapsed_ms(event_ref start, event_ref stop) {
  float ms = 0;
  COBATCH_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start.native_handle()),
                                          static_cast<cudaEvent_t>(stop.native_handle())));
  return ms;
}

}  // namespace cobatch::gpu::cuda
