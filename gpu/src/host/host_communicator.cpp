// Host backend communicator: ranks of one process meet at a rendezvous. Each
// collective runs on the calling rank's stream worker (the "device"), so the
// waiting never blocks a user thread, exactly as an NCCL kernel waits on the
// GPU and not on the host.
#include "cobatch/gpu/error.hpp"
#include "cobatch/gpu/float16.hpp"
#include "cobatch/gpu/host/host_device.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace cobatch::gpu::host {
namespace {

enum class collective { all_gather, all_reduce, reduce_scatter, barrier };

struct call {
  collective kind;
  const void* send;
  std::size_t count;
  data_type type;
  reduce_op op;
};

template <typename T>
void reduce_into(T* acc, const T* in, std::size_t n, reduce_op op) {
  for (std::size_t i = 0; i < n; ++i) {
    switch (op) {
      case reduce_op::sum: acc[i] = static_cast<T>(acc[i] + in[i]); break;
      case reduce_op::prod: acc[i] = static_cast<T>(acc[i] * in[i]); break;
      case reduce_op::min: acc[i] = std::min(acc[i], in[i]); break;
      case reduce_op::max: acc[i] = std::max(acc[i], in[i]); break;
    }
  }
}

// 16-bit floats reduce in f32 and round once per element, as NCCL does.
template <typename Half>
void reduce_halves(Half* acc, const Half* in, std::size_t n, reduce_op op) {
  for (std::size_t i = 0; i < n; ++i) {
    float a = acc[i].to_float();
    const float b = in[i].to_float();
    switch (op) {
      case reduce_op::sum: a += b; break;
      case reduce_op::prod: a *= b; break;
      case reduce_op::min: a = std::min(a, b); break;
      case reduce_op::max: a = std::max(a, b); break;
    }
    acc[i] = Half::from_float(a);
  }
}

void reduce_bytes(std::byte* acc, const std::byte* in, std::size_t n, data_type t, reduce_op op) {
  switch (t) {
    case data_type::f32: reduce_into(reinterpret_cast<float*>(acc), reinterpret_cast<const float*>(in), n, op); break;
    case data_type::f64: reduce_into(reinterpret_cast<double*>(acc), reinterpret_cast<const double*>(in), n, op); break;
    case data_type::i32:
      reduce_into(reinterpret_cast<std::int32_t*>(acc), reinterpret_cast<const std::int32_t*>(in), n, op);
      break;
    case data_type::i64:
      reduce_into(reinterpret_cast<std::int64_t*>(acc), reinterpret_cast<const std::int64_t*>(in), n, op);
      break;
    case data_type::u8:
      reduce_into(reinterpret_cast<std::uint8_t*>(acc), reinterpret_cast<const std::uint8_t*>(in), n, op);
      break;
    case data_type::bf16: reduce_halves(reinterpret_cast<bf16*>(acc), reinterpret_cast<const bf16*>(in), n, op); break;
    case data_type::f16: reduce_halves(reinterpret_cast<f16*>(acc), reinterpret_cast<const f16*>(in), n, op); break;
  }
}

[[noreturn]] void raise(errc code, const std::string& what) {
  throw std::system_error(make_error_code(code), "cobatch: host communicator: " + what);
}

class rendezvous {
 public:
  rendezvous(int size, communicator_options options, communicator_hooks hooks)
      : size_(size), options_(options), hooks_(std::move(hooks)), calls_(size) {}

  int size() const noexcept { return size_; }

  /// Runs one collective for `rank`; returns this rank's result bytes.
  std::vector<std::byte> collective_call(int rank, const call& mine) {
    std::unique_lock lock(mutex_);
    // Phase 1: wait until the previous collective has been read by everyone,
    // then deposit this rank's call.
    wait_for(lock, rank, [&] { return !copying_; });
    calls_[rank] = mine;
    if (++arrived_ == size_) {
      copying_ = true;
      cv_.notify_all();
    } else {
      const auto generation = generation_;
      wait_for(lock, rank, [&] { return copying_ && generation_ == generation; });
    }
    // Phase 2: check agreement and compute this rank's result from the
    // others' send buffers, which stay valid until everyone has left.
    std::vector<std::byte> out;
    std::string mismatch;
    for (int r = 0; r < size_; ++r) {
      if (calls_[r].kind != mine.kind || calls_[r].count != mine.count || calls_[r].type != mine.type ||
          calls_[r].op != mine.op) {
        mismatch = "rank " + std::to_string(r) + " issued a different collective than rank " + std::to_string(rank);
      }
    }
    if (mismatch.empty()) out = compute(rank, mine);
    // Phase 3: leave; the last one out opens the next collective.
    if (++left_ == size_) {
      left_ = 0;
      arrived_ = 0;
      copying_ = false;
      ++generation_;
      cv_.notify_all();
    } else {
      const auto generation = generation_;
      wait_for(lock, rank, [&] { return generation_ != generation; });
    }
    if (!mismatch.empty()) raise(errc::rank_mismatch, mismatch);
    return out;
  }

  /// A letter a sender posted and a receiver copies from; the sender's
  /// buffer must stay valid until `taken`.
  struct letter {
    const void* data;
    std::size_t bytes;
    bool taken = false;
  };

  /// Leaves `buf` for rank `to` without waiting: a group posts all its sends
  /// before it receives, which is what keeps paired exchanges from deadlocking.
  std::shared_ptr<letter> post(int from, int to, const void* buf, std::size_t bytes) {
    std::lock_guard lock(mutex_);
    auto l = std::make_shared<letter>(letter{buf, bytes});
    mailbox_[{from, to}].push_back(l);
    cv_.notify_all();
    return l;
  }

  /// Waits, as rank `from`, until the receiver has copied a posted letter.
  void wait_taken(int from, const letter& l) {
    std::unique_lock lock(mutex_);
    wait_for(lock, from, [&] { return l.taken; });
  }

  void recv(int from, int to, void* buf, std::size_t bytes) {
    std::unique_lock lock(mutex_);
    auto& box = mailbox_[{from, to}];
    wait_for(lock, to, [&] { return !box.empty(); });
    auto l = box.front();
    box.pop_front();
    l->taken = true;
    if (l->bytes != bytes) {
      // A protocol error, as NCCL's asynchronous error: the communicator is
      // aborted so that every rank fails with it (the sender, which would
      // otherwise report success, and ranks waiting at a later collective,
      // which would otherwise wait out the timeout, or forever).
      const std::string why = "rank " + std::to_string(from) + " sent " + std::to_string(l->bytes) + " bytes, rank " +
                              std::to_string(to) + " expected " + std::to_string(bytes);
      abort_locked(errc::rank_mismatch, why);
      raise(errc::rank_mismatch, why);
    }
    cv_.notify_all();
    std::memcpy(buf, l->data, bytes);
  }

  void abort(errc why) noexcept {
    std::lock_guard lock(mutex_);
    abort_locked(why, "communicator aborted");
  }

 private:
  /// Waits, as `rank`, until `ready` or an abort.
  template <typename Pred>
  void wait_for(std::unique_lock<std::mutex>& lock, int rank, Pred ready) {
    auto done = [&] { return aborted_ || ready(); };
    if (hooks_.before_block && !done()) hooks_.before_block(rank);
    if (options_.timeout.count() > 0) {
      if (!cv_.wait_for(lock, options_.timeout, done)) {
        // A rank that never arrives must not hang the others: abort all.
        abort_locked(errc::timeout, "a rank did not arrive in time; communicator aborted");
      }
    } else {
      cv_.wait(lock, done);
    }
    if (aborted_) raise(*aborted_, abort_reason_);
  }

  void abort_locked(errc why, const std::string& reason) noexcept {
    if (!aborted_) {
      aborted_ = why;
      try {
        abort_reason_ = reason;
      } catch (...) {
        // The code still says why.
      }
    }
    cv_.notify_all();
  }

  std::vector<std::byte> compute(int rank, const call& mine) const {
    const std::size_t elem = size_of(mine.type);
    switch (mine.kind) {
      case collective::all_gather: {
        std::vector<std::byte> out(elem * mine.count * static_cast<std::size_t>(size_));
        for (int r = 0; r < size_; ++r) {
          std::memcpy(out.data() + elem * mine.count * static_cast<std::size_t>(r), calls_[r].send, elem * mine.count);
        }
        return out;
      }
      case collective::all_reduce: {
        std::vector<std::byte> out(elem * mine.count);
        std::memcpy(out.data(), calls_[0].send, out.size());
        for (int r = 1; r < size_; ++r) {
          reduce_bytes(out.data(), static_cast<const std::byte*>(calls_[r].send), mine.count, mine.type, mine.op);
        }
        return out;
      }
      case collective::reduce_scatter: {
        const std::size_t offset = elem * mine.count * static_cast<std::size_t>(rank);
        std::vector<std::byte> out(elem * mine.count);
        std::memcpy(out.data(), static_cast<const std::byte*>(calls_[0].send) + offset, out.size());
        for (int r = 1; r < size_; ++r) {
          reduce_bytes(out.data(), static_cast<const std::byte*>(calls_[r].send) + offset, mine.count, mine.type,
                       mine.op);
        }
        return out;
      }
      case collective::barrier: return {};
    }
    return {};
  }

  const int size_;
  const communicator_options options_;
  const communicator_hooks hooks_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<call> calls_;
  int arrived_ = 0;
  int left_ = 0;
  bool copying_ = false;
  unsigned long generation_ = 0;
  std::optional<errc> aborted_;
  std::string abort_reason_;  // what every rank's error says once aborted_
  std::map<std::pair<int, int>, std::deque<std::shared_ptr<letter>>> mailbox_;
};

class host_communicator final : public detail::communicator_impl {
 public:
  host_communicator(std::shared_ptr<rendezvous> shared, int rank) : shared_(std::move(shared)), rank_(rank) {}

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return shared_->size(); }

  void all_gather(const void* send, void* recv, std::size_t count, data_type t, detail::stream_impl& s) override {
    run(s, call{collective::all_gather, send, count, t, reduce_op::sum}, recv);
  }
  void all_reduce(const void* send, void* recv, std::size_t count, data_type t, reduce_op op,
                  detail::stream_impl& s) override {
    run(s, call{collective::all_reduce, send, count, t, op}, recv);
  }
  void reduce_scatter(const void* send, void* recv, std::size_t recv_count, data_type t, reduce_op op,
                      detail::stream_impl& s) override {
    run(s, call{collective::reduce_scatter, send, recv_count, t, op}, recv);
  }
  void group_start() override { ++group_depth_; }

  void group_end() override {
    if (group_depth_ == 0) {
      throw std::system_error(make_error_code(errc::invalid_argument), "cobatch: group_end without group_start");
    }
    if (--group_depth_ > 0) return;
    // One stream function per stream of the group: post every send first,
    // then receive, then wait until the peers took what was posted.
    auto ops = std::move(grouped_);
    grouped_.clear();
    while (!ops.empty()) {
      detail::stream_impl* s = ops.front().stream;
      std::vector<p2p> mine;
      std::erase_if(ops, [&](p2p& op) {
        if (op.stream != s) return false;
        mine.push_back(op);
        return true;
      });
      s->enqueue([shared = shared_, rank = rank_, mine = std::move(mine)] {
        std::vector<std::shared_ptr<rendezvous::letter>> posted;
        for (const auto& op : mine) {
          if (op.kind == p2p::op_kind::send) posted.push_back(shared->post(rank, op.peer, op.send_buf, op.bytes));
        }
        for (const auto& op : mine) {
          if (op.kind == p2p::op_kind::recv) shared->recv(op.peer, rank, op.recv_buf, op.bytes);
          if (op.kind == p2p::op_kind::self_copy) std::memcpy(op.recv_buf, op.send_buf, op.bytes);
        }
        for (const auto& l : posted) shared->wait_taken(rank, *l);
      });
    }
  }

  void send(const void* buf, std::size_t count, data_type t, int peer, detail::stream_impl& s) override {
    check_peer(peer);
    check_grouped("send");
    grouped_.push_back({p2p::op_kind::send, peer, buf, nullptr, count * size_of(t), &s});
  }
  void recv(void* buf, std::size_t count, data_type t, int peer, detail::stream_impl& s) override {
    check_peer(peer);
    check_grouped("recv");
    grouped_.push_back({p2p::op_kind::recv, peer, nullptr, buf, count * size_of(t), &s});
  }
  void all_to_all(const void* send, void* recv, std::size_t count, data_type t, detail::stream_impl& s) override {
    check_grouped("all_to_all");
    if (send == nullptr || recv == nullptr) {
      throw std::system_error(make_error_code(errc::invalid_argument), "cobatch: all_to_all with a null buffer");
    }
    const std::size_t slice = count * size_of(t);
    const auto* in = static_cast<const std::byte*>(send);
    auto* out = static_cast<std::byte*>(recv);
    const auto world = static_cast<std::size_t>(size());
    if (in < out + slice * world && out < in + slice * world) {
      throw std::system_error(make_error_code(errc::invalid_argument),
                              "cobatch: all_to_all send and recv buffers overlap");
    }
    for (int r = 0; r < size(); ++r) {
      const auto offset = slice * static_cast<std::size_t>(r);
      if (r == rank_) {
        grouped_.push_back({p2p::op_kind::self_copy, r, in + offset, out + offset, slice, &s});
      } else {
        grouped_.push_back({p2p::op_kind::send, r, in + offset, nullptr, slice, &s});
        grouped_.push_back({p2p::op_kind::recv, r, nullptr, out + offset, slice, &s});
      }
    }
  }
  void barrier(detail::stream_impl& s) override {
    run(s, call{collective::barrier, nullptr, 0, data_type::u8, reduce_op::sum}, nullptr);
  }
  void abort() noexcept override { shared_->abort(errc::communicator_aborted); }

 private:
  void check_peer(int peer) const {
    if (peer < 0 || peer >= size() || peer == rank_) {
      throw std::system_error(make_error_code(errc::invalid_argument),
                              "cobatch: peer " + std::to_string(peer) + " is not another rank of a communicator of size " +
                                  std::to_string(size()));
    }
  }
  void run(detail::stream_impl& s, call c, void* recv) {
    if (c.kind != collective::barrier && (c.send == nullptr || recv == nullptr)) {
      throw std::system_error(make_error_code(errc::invalid_argument), "cobatch: collective with a null buffer");
    }
    s.enqueue([shared = shared_, rank = rank_, c, recv] {
      auto result = shared->collective_call(rank, c);
      if (!result.empty()) std::memcpy(recv, result.data(), result.size());
    });
  }

  void check_grouped(const char* what) const {
    if (group_depth_ == 0) {
      throw std::system_error(make_error_code(errc::invalid_argument),
                              std::string("cobatch: ") + what + " outside a group (take a group_guard)");
    }
  }

  struct p2p {
    enum class op_kind { send, recv, self_copy } kind;
    int peer;
    const void* send_buf;
    void* recv_buf;
    std::size_t bytes;
    detail::stream_impl* stream;
  };

  std::shared_ptr<rendezvous> shared_;
  int rank_;
  // Group state: host-side, touched only by the thread issuing the calls.
  int group_depth_ = 0;
  std::vector<p2p> grouped_;
};

}  // namespace

std::vector<communicator> make_communicators(int world_size, communicator_options options) {
  return make_communicators(world_size, options, {});
}

std::vector<communicator> make_communicators(int world_size, communicator_options options, communicator_hooks hooks) {
  if (world_size < 1) {
    throw std::system_error(make_error_code(errc::invalid_argument),
                            "cobatch: world size must be at least 1, got " + std::to_string(world_size));
  }
  auto shared = std::make_shared<rendezvous>(world_size, options, std::move(hooks));
  std::vector<communicator> ranks;
  ranks.reserve(static_cast<std::size_t>(world_size));
  for (int r = 0; r < world_size; ++r) ranks.emplace_back(std::make_unique<host_communicator>(shared, r));
  return ranks;
}

}  // namespace cobatch::gpu::host
