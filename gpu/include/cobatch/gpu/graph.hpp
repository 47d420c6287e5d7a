// graph / graph_exec: a captured sequence of stream operations, and its
// instantiated, replayable form. Replaying costs one launch on the host
// instead of one per captured operation.
//
// A replay means what eager execution meant: a wait on an event recorded
// outside the capture waits for the event's record as it stands at launch.
// Lifetime: a graph owns what it captured (work, the events' record slots), so
// it may outlive the streams, events and scheduler of its capture; a host
// graph_exec owns worker streams for its side lanes and must be destroyed
// before the reactor. Threads: launch a graph_exec from one thread at a time.
// docs/lifetimes.md.
#pragma once

#include <cstddef>
#include <memory>
#include <utility>

namespace cobatch::gpu {

class stream_ref;

namespace detail {
class stream_impl;

class graph_exec_impl {
 public:
  virtual ~graph_exec_impl() = default;
  /// Enqueues one replay of the whole graph on `s`, after what is there.
  virtual void launch(stream_impl& s) = 0;
  virtual std::size_t node_count() const noexcept = 0;
};

class graph_impl {
 public:
  virtual ~graph_impl() = default;
  virtual std::unique_ptr<graph_exec_impl> instantiate() const = 0;
  virtual std::size_t node_count() const noexcept = 0;
};
}  // namespace detail

/// Instantiated graph; launch it on any stream of the same device.
class graph_exec {
 public:
  graph_exec() noexcept = default;
  explicit graph_exec(std::unique_ptr<detail::graph_exec_impl> impl) noexcept : impl_(std::move(impl)) {}
  explicit operator bool() const noexcept { return static_cast<bool>(impl_); }

  /// Enqueues one replay on `s`; returns at once.
  void launch(stream_ref s) const;
  std::size_t node_count() const noexcept { return impl_ ? impl_->node_count() : 0; }
  /// The backend object (null when empty), for backend-specific operations.
  detail::graph_exec_impl* impl() const noexcept { return impl_.get(); }
  std::unique_ptr<detail::graph_exec_impl> release() noexcept { return std::move(impl_); }

 private:
  std::unique_ptr<detail::graph_exec_impl> impl_;
};

/// A captured graph (the template); instantiate() gives a replayable one.
class graph {
 public:
  graph() noexcept = default;
  explicit graph(std::unique_ptr<detail::graph_impl> impl) noexcept : impl_(std::move(impl)) {}
  explicit operator bool() const noexcept { return static_cast<bool>(impl_); }

  graph_exec instantiate() const { return graph_exec(impl_->instantiate()); }
  std::size_t node_count() const noexcept { return impl_ ? impl_->node_count() : 0; }
  detail::graph_impl* impl() const noexcept { return impl_.get(); }
  std::unique_ptr<detail::graph_impl> release() noexcept { return std::move(impl_); }

 private:
  std::unique_ptr<detail::graph_impl> impl_;
};

}  // namespace cobatch::gpu
