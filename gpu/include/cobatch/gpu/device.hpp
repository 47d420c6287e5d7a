// device: the factory for a backend's streams and events, and the source of
// its memory information. One interface for the host and CUDA backends.
//
// Threads: make_stream, make_event and memory from any thread. Lifetime: the
// reactor must outlive the device and everything made through it; streams,
// events and buffers may outlive the device object. docs/lifetimes.md.
#pragma once

#include "cobatch/coro/completion_reactor.hpp"
#include "cobatch/gpu/event.hpp"
#include "cobatch/gpu/memory_info.hpp"
#include "cobatch/gpu/stream.hpp"

#include <string>

namespace cobatch::gpu {

enum class backend_kind { host, cuda };

class device {
 public:
  virtual ~device() = default;

  virtual backend_kind backend() const noexcept = 0;
  virtual std::string name() const = 0;
  virtual int ordinal() const noexcept = 0;
  virtual memory_info memory() const = 0;

  virtual stream make_stream(stream_options options = {}) = 0;
  virtual event make_event() = 0;

  /// The reactor through which this device's events and streams are awaited.
  virtual coro::completion_reactor& reactor() const noexcept = 0;

 protected:
  device() = default;
  device(const device&) = default;
  device& operator=(const device&) = default;
};

}  // namespace cobatch::gpu
