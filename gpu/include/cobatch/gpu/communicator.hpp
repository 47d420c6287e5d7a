// communicator: collectives between ranks, enqueued on a stream like any other
// device work (so they overlap compute on other streams), awaited through the
// stream or an event like any other work.
#pragma once

#include "cobatch/gpu/stream.hpp"

#include <cstddef>
#include <memory>
#include <utility>

namespace cobatch::gpu {

enum class data_type { f32, f64, i32, i64, u8 };
enum class reduce_op { sum, prod, min, max };

constexpr std::size_t size_of(data_type t) noexcept {
  switch (t) {
    case data_type::f32: return 4;
    case data_type::f64: return 8;
    case data_type::i32: return 4;
    case data_type::i64: return 8;
    case data_type::u8: return 1;
  }
  return 0;
}

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
  virtual void send(const void* buf, std::size_t count, data_type t, int peer, stream_impl& s) = 0;
  virtual void recv(void* buf, std::size_t count, data_type t, int peer, stream_impl& s) = 0;
  virtual void barrier(stream_impl& s) = 0;
  virtual void abort() noexcept = 0;
};
}  // namespace detail

/// One rank's endpoint. Every rank must issue the same collectives in the same
/// order; a mismatch is reported as errc::rank_mismatch on every rank's stream.
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
  void send(const void* buf, std::size_t count, data_type t, int peer, stream_ref s) const {
    impl_->send(buf, count, t, peer, s.impl());
  }
  void recv(void* buf, std::size_t count, data_type t, int peer, stream_ref s) const {
    impl_->recv(buf, count, t, peer, s.impl());
  }
  void barrier(stream_ref s) const { impl_->barrier(s.impl()); }
  /// Fails every pending and later collective on every rank with
  /// errc::communicator_aborted; nothing waits forever.
  void abort() const noexcept { impl_->abort(); }

 private:
  std::unique_ptr<detail::communicator_impl> impl_;
};

}  // namespace cobatch::gpu
