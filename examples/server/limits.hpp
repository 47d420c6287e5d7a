// limits: what one server instance accepts, and the bounded waiting room in
// front of the engine.
#pragma once

#include <chrono>
#include <cstddef>
#include <utility>

namespace cobatch::server {

struct server_limits {
  /// Open connections; one more is answered 503 and closed.
  std::size_t max_connections = 1024;
  /// Completion requests accepted but not yet admitted by the engine (the
  /// engine's waiting queue plus those on their way to it); one more is
  /// answered 503 with Retry-After.
  std::size_t max_waiting = 256;
  std::size_t max_header_bytes = 16 * 1024;
  std::size_t max_body_bytes = 1024 * 1024;
  /// From a request's first byte to the end of its headers; a slower client
  /// is closed (the slowloris defence).
  std::chrono::milliseconds header_timeout{10'000};
  /// From the end of the headers to the end of the body.
  std::chrono::milliseconds body_timeout{30'000};
  /// A keep-alive connection that sends nothing for this long is closed.
  std::chrono::milliseconds idle_timeout{60'000};
  /// SIGTERM/SIGINT: how long in-flight requests may take to finish before
  /// they are cancelled and their connections closed.
  std::chrono::milliseconds shutdown_timeout{10'000};
  /// The Retry-After header of a 503, in seconds.
  int retry_after_s = 1;
};

/// The bounded waiting room: a completion request takes a slot before it is
/// submitted and gives it back when the engine admits it (its first token) or
/// when it ends, whichever comes first. Used on the HTTP thread only.
class waiting_room {
 public:
  explicit waiting_room(std::size_t capacity) noexcept : capacity_(capacity) {}

  class slot {
   public:
    slot() noexcept = default;
    explicit slot(waiting_room* room) noexcept : room_(room) {}
    slot(slot&& other) noexcept : room_(std::exchange(other.room_, nullptr)) {}
    slot& operator=(slot&& other) noexcept {
      if (this != &other) {
        release();
        room_ = std::exchange(other.room_, nullptr);
      }
      return *this;
    }
    ~slot() { release(); }
    explicit operator bool() const noexcept { return room_ != nullptr; }
    void release() noexcept {
      if (room_ != nullptr) --std::exchange(room_, nullptr)->waiting_;
    }

   private:
    waiting_room* room_ = nullptr;
  };

  /// A slot, or an empty one when the room is full.
  slot try_enter() noexcept {
    if (waiting_ >= capacity_) return slot{};
    ++waiting_;
    return slot{this};
  }
  std::size_t waiting() const noexcept { return waiting_; }
  std::size_t capacity() const noexcept { return capacity_; }

 private:
  std::size_t capacity_;
  std::size_t waiting_ = 0;
};

}  // namespace cobatch::server
