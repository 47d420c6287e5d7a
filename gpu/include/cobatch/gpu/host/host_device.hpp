// The host backend: a real executor for cobatch's gpu interface on the CPU.
// Streams are in-order queues, each run by a worker thread (the "device");
// events are fences; graphs record and replay stream work; communicators
// connect ranks living in one process. Every CPU test and the overlap
// benchmarks run on it, and so can users without GPUs.
//
// Lifetimes and threads as in docs/lifetimes.md: the reactor outlives the
// device and its streams, events and graph execs (a stream worker kicks the
// reactor when it signals a polled fence); buffers may outlive the device.
#pragma once

#include "cobatch/gpu/communicator.hpp"
#include "cobatch/gpu/device.hpp"

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace cobatch::gpu::host {

struct device_options {
  std::string name = "cobatch host device";
  int ordinal = 0;
  /// Memory the device pretends to have; allocate() fails beyond it.
  std::size_t memory_budget = std::size_t{1} << 30;
};

class host_device;

/// Memory allocated through a host_device, counted against its budget.
/// Aligned to 256 bytes; one of 16 MiB or more to 2 MiB, in transparent huge
/// pages where the kernel grants them (see host_device::allocate).
class buffer {
 public:
  buffer() noexcept = default;
  buffer(buffer&& other) noexcept;
  buffer& operator=(buffer&& other) noexcept;
  buffer(const buffer&) = delete;
  buffer& operator=(const buffer&) = delete;
  ~buffer();

  std::byte* data() const noexcept { return data_.get(); }
  std::size_t size() const noexcept { return size_; }
  template <typename T>
  T* as() const noexcept {
    return reinterpret_cast<T*>(data_.get());
  }

 private:
  friend class host_device;
  struct accounting;
  struct free_bytes {
    void operator()(std::byte* p) const noexcept;
  };
  buffer(std::unique_ptr<std::byte, free_bytes> data, std::size_t size, std::shared_ptr<accounting> owner) noexcept;
  std::unique_ptr<std::byte, free_bytes> data_;
  std::size_t size_ = 0;
  std::shared_ptr<accounting> owner_;
};

class host_device final : public device {
 public:
  /// Events and streams of this device are awaited through `reactor`.
  host_device(coro::completion_reactor& reactor, device_options options = {});
  ~host_device() override;

  backend_kind backend() const noexcept override { return backend_kind::host; }
  std::string name() const override { return options_.name; }
  int ordinal() const noexcept override { return options_.ordinal; }
  memory_info memory() const override;

  stream make_stream(stream_options options = {}) override;
  event make_event() override;
  coro::completion_reactor& reactor() const noexcept override { return *reactor_; }

  /// Allocates `bytes` (zeroed, its pages touched) against the budget;
  /// throws std::system_error with errc::out_of_memory when it does not fit,
  /// std::bad_alloc when the system has no memory for it. Aligned to 256
  /// bytes. A buffer of 16 MiB or more is aligned to 2 MiB and advised for
  /// transparent huge pages (madvise MADV_HUGEPAGE): a kernel that streams
  /// through several large buffers at once (the LSE merge reads one per
  /// shard) then takes a TLB miss per 2 MiB instead of per 4 KiB, and in a
  /// virtual machine each miss is a two-level page walk. With THP in
  /// `madvise` mode, a common default, only advised memory gets huge pages;
  /// in `never` mode the advice changes nothing.
  buffer allocate(std::size_t bytes);

 private:
  coro::completion_reactor* reactor_;
  device_options options_;
  std::shared_ptr<buffer::accounting> accounting_;
};

/// Observation points of the in-process communicators.
struct communicator_hooks {
  /// Called each time rank `rank` is about to block waiting for another rank
  /// (at a collective, a send or a receive), on that rank's stream thread and
  /// with the communicator's lock held: it must not call the communicator.
  /// Lets a test act while a rank is known to wait (abort the communicator,
  /// say), where a sleep would only make that likely.
  std::function<void(int rank)> before_block;
};

/// Creates `world_size` connected ranks in this process; element r is rank r.
std::vector<communicator> make_communicators(int world_size, communicator_options options = {});
std::vector<communicator> make_communicators(int world_size, communicator_options options, communicator_hooks hooks);

}  // namespace cobatch::gpu::host
