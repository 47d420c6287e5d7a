// communicator: collectives between ranks, enqueued on a stream like any other
// device work (so they overlap compute on other streams), awaited through the
// stream or an event like any other work.
#pragma once

#include "cobatch/gpu/data_type.hpp"
#include "cobatch/gpu/error.hpp"
#include "cobatch/gpu/stream.hpp"

#include <chrono>
#include <cstddef>
#include <memory>
#include <system_error>
#include <utility>

namespace cobatch::gpu {

/// Options of a communicator, the same for every backend.
struct communicator_options {
  /// How long a rank waits: for the others at a collective, and (NCCL) for
  /// communicator creation and each call's enqueueing. Running out aborts
  /// the communicator with errc::timeout. Zero waits forever (not recommended).
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
};

enum class reduce_op { sum, prod, min, max };

namespace detail {
class communicator_impl {
 public:
  virtual ~communicator_impl() = default;
  virtual int rank() const noexcept = 0;
  virtual int size() const noexcept = 0;
  virtual void all_gather(const void* send, void* recv, std::size_t count, data_type t, stream_impl& s) = 0;
  virtual void all_reduce(const void* send, void* recv, std::size_t count, data_type t, reduce_op op,
                          stream_impl& s) = 0;
  virtual void reduce_scatter(const void* send, void* recv, std::size_t recv_count, data_type t,
                              reduce_op op, stream_impl& s) = 0;
  /// Point-to-point calls and all_to_all are issued only between
  /// group_start() and group_end(); group_guard guarantees it.
  virtual void group_start() = 0;
  virtual void group_end() = 0;
  virtual void send(const void* buf, std::size_t count, data_type t, int peer, stream_impl& s) = 0;
  virtual void recv(void* buf, std::size_t count, data_type t, int peer, stream_impl& s) = 0;
  virtual void all_to_all(const void* send, void* recv, std::size_t count, data_type t, stream_impl& s) = 0;
  virtual void barrier(stream_impl& s) = 0;
  virtual void abort() noexcept = 0;
};
}  // namespace detail

class communicator;

/// An open group of point-to-point calls on one communicator. A rank whose
/// send to a peer waits for the peer's receive, while the peer sends to it
/// first, deadlocks unless both calls are issued together; NCCL requires such
/// pairs (and all_to_all) inside ncclGroupStart/ncclGroupEnd. send, recv and
/// all_to_all take a group_guard& so that the rule is checked by the compiler,
/// not found by a hang. Groups nest; the outermost one issues the calls.
///
///   {
///     gpu::group_guard group(comm);
///     comm.send(group, a, n, data_type::f32, peer, s);
///     comm.recv(group, b, n, data_type::f32, peer, s);
///   }  // issued here
class group_guard {
 public:
  explicit group_guard(const communicator& c);
  group_guard(const group_guard&) = delete;
  group_guard& operator=(const group_guard&) = delete;
  /// Ends the group if end() was not called. Never throws: a failure to issue
  /// is reported by the streams of the grouped calls (call end() to see it
  /// as an exception instead).
  ~group_guard();
  /// Issues the grouped calls now; throws std::system_error if that fails.
  void end();

 private:
  friend class communicator;
  detail::communicator_impl* impl_;
  bool open_ = true;
};

/// One rank's endpoint. Every rank must issue the same collectives in the same
/// order; a mismatch is reported as errc::rank_mismatch on every rank's
/// stream (the host backend also aborts the communicator on a point-to-point
/// size mismatch, so that the sender and bystanders fail too).
/// Threads: one thread at a time per endpoint (its group state is host-side).
/// Buffers must stay valid until the stream has run the collective.
class communicator {
 public:
  communicator() noexcept = default;
  explicit communicator(std::unique_ptr<detail::communicator_impl> impl) noexcept : impl_(std::move(impl)) {}
  explicit operator bool() const noexcept { return static_cast<bool>(impl_); }

  int rank() const noexcept { return impl_->rank(); }
  int size() const noexcept { return impl_->size(); }

  /// recv[r * count .. (r+1) * count) = rank r's send[0 .. count).
  void all_gather(const void* send, void* recv, std::size_t count, data_type t, stream_ref s) const {
    impl_->all_gather(send, recv, count, t, s.impl());
  }
  /// recv[i] = op over ranks of send[i]. send may equal recv (in place).
  void all_reduce(const void* send, void* recv, std::size_t count, data_type t, reduce_op op,
                  stream_ref s) const {
    impl_->all_reduce(send, recv, count, t, op, s.impl());
  }
  /// recv[i] = op over ranks of send[rank * recv_count + i].
  void reduce_scatter(const void* send, void* recv, std::size_t recv_count, data_type t, reduce_op op,
                      stream_ref s) const {
    impl_->reduce_scatter(send, recv, recv_count, t, op, s.impl());
  }
  /// Sends count elements to `peer`, which issues the matching recv.
  void send(group_guard& group, const void* buf, std::size_t count, data_type t, int peer, stream_ref s) const {
    impl_->send(buf, count, t, peer, checked(group, s).impl());
  }
  void recv(group_guard& group, void* buf, std::size_t count, data_type t, int peer, stream_ref s) const {
    impl_->recv(buf, count, t, peer, checked(group, s).impl());
  }
  /// recv[r * count .. (r+1) * count) = rank r's send[rank * count .. (rank+1) * count).
  /// send and recv hold count * size() elements and must not overlap.
  void all_to_all(group_guard& group, const void* send, void* recv, std::size_t count, data_type t,
                  stream_ref s) const {
    impl_->all_to_all(send, recv, count, t, checked(group, s).impl());
  }
  void barrier(stream_ref s) const { impl_->barrier(s.impl()); }
  /// Fails every pending and later collective on every rank with
  /// errc::communicator_aborted; nothing waits forever.
  void abort() const noexcept { impl_->abort(); }

  detail::communicator_impl& impl() const noexcept { return *impl_; }

 private:
  /// A guard of another communicator (or one already ended) would leave the
  /// call outside any group of this one.
  stream_ref checked(group_guard& group, stream_ref s) const {
    if (group.impl_ != impl_.get() || !group.open_) {
      throw std::system_error(make_error_code(errc::invalid_argument),
                              "cobatch: point-to-point call with a group_guard that is not open on this communicator");
    }
    return s;
  }
  std::unique_ptr<detail::communicator_impl> impl_;
};

inline group_guard::group_guard(const communicator& c) : impl_(&c.impl()) { impl_->group_start(); }

inline group_guard::~group_guard() {
  if (!open_) return;
  open_ = false;
  try {
    impl_->group_end();
  } catch (...) {
    // Destructors never throw; the grouped calls' streams carry the failure.
  }
}

inline void group_guard::end() {
  if (!open_) return;
  open_ = false;
  impl_->group_end();
}

}  // namespace cobatch::gpu
