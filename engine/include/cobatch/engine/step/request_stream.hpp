// request_stream: the tokens of one request as the engine produces them, for
// a consumer on any thread (an HTTP handler's coroutine, a callback).
#pragma once

#include <cobatch/engine/step/request.hpp>

#include <asio/any_io_executor.hpp>
#include <asio/associated_cancellation_slot.hpp>
#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/error.hpp>
#include <asio/execution.hpp>
#include <asio/post.hpp>
#include <asio/prefer.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace cobatch::engine {

/// What one async_next() delivers: every token produced since the previous
/// chunk, and, on the last chunk, why the request ended.
struct token_chunk {
  std::vector<std::int32_t> tokens;
  finish_reason finish = finish_reason::none;  ///< none until the last chunk
  std::error_code error;                       ///< for refused and failed
  std::string detail;                          ///< the error's text
  bool last() const noexcept { return finish != finish_reason::none; }
};

namespace detail {

/// The shared state between the engine (producer) and a request_stream
/// (consumer). Thread-safe; at most one wait at a time.
class request_channel {
 public:
  explicit request_channel(request_id id, asio::any_io_executor fallback) : id_(id), fallback_(std::move(fallback)) {}
  request_channel(const request_channel&) = delete;
  request_channel& operator=(const request_channel&) = delete;
  ~request_channel() { complete_waiter(asio::error::operation_aborted); }

  request_id id() const noexcept { return id_; }

  /// Producer: appends tokens and, when `finish` is not none, ends the stream.
  void push(std::span<const std::int32_t> tokens, finish_reason finish, std::error_code ec = {},
            const std::string& detail = {}) {
    waiter* w = nullptr;
    {
      std::lock_guard lock(mutex_);
      if (finish_ != finish_reason::none) return;  // ended already
      pending_.insert(pending_.end(), tokens.begin(), tokens.end());
      if (finish != finish_reason::none) {
        finish_ = finish;
        error_ = ec;
        detail_ = detail;
      }
      if (waiter_ != nullptr) w = std::exchange(waiter_, nullptr);
    }
    if (w != nullptr) deliver(w);
  }

  bool finished() const {
    std::lock_guard lock(mutex_);
    return finish_ != finish_reason::none;
  }

  template <class Handler>
  void start_wait(Handler handler);

 private:
  struct waiter {
    virtual void complete(std::error_code ec, token_chunk chunk) = 0;  // posts and frees
    virtual ~waiter() = default;
  };
  template <class Handler>
  struct waiter_impl final : waiter {
    using work_type = std::decay_t<decltype(asio::prefer(
        std::declval<asio::associated_executor_t<Handler, asio::any_io_executor>>(),
        asio::execution::outstanding_work.tracked))>;
    waiter_impl(Handler h, const asio::any_io_executor& fallback)
        : handler(std::move(h)),
          work(asio::prefer(asio::get_associated_executor(handler, fallback), asio::execution::outstanding_work.tracked)) {}
    void complete(std::error_code ec, token_chunk chunk) override {
      auto ex = work;
      asio::post(std::move(ex), [self = this, ec, c = std::move(chunk)]() mutable {
        auto slot = asio::get_associated_cancellation_slot(self->handler);
        if (slot.is_connected()) slot.clear();
        Handler h(std::move(self->handler));
        delete self;
        std::move(h)(ec, std::move(c));
      });
    }
    Handler handler;
    work_type work;
  };

  // Takes what is pending (the caller holds no lock) and completes `w`.
  void deliver(waiter* w) {
    token_chunk chunk;
    std::error_code ec;
    {
      std::lock_guard lock(mutex_);
      if (pending_.empty() && finish_ == finish_reason::none) {
        waiter_ = w;  // nothing after all (raced with another delivery)
        return;
      }
      if (pending_.empty() && delivered_last_) {
        ec = asio::error::eof;
      } else {
        chunk.tokens.swap(pending_);
        if (finish_ != finish_reason::none) {
          chunk.finish = finish_;
          chunk.error = error_;
          chunk.detail = detail_;
          delivered_last_ = true;
        }
      }
    }
    w->complete(ec, std::move(chunk));
  }

  void complete_waiter(std::error_code ec) {
    waiter* w = nullptr;
    {
      std::lock_guard lock(mutex_);
      w = std::exchange(waiter_, nullptr);
    }
    if (w != nullptr) w->complete(ec, {});
  }

  request_id id_;
  asio::any_io_executor fallback_;
  mutable std::mutex mutex_;
  std::vector<std::int32_t> pending_;
  finish_reason finish_ = finish_reason::none;
  std::error_code error_;
  std::string detail_;
  bool delivered_last_ = false;
  waiter* waiter_ = nullptr;
};

template <class Handler>
void request_channel::start_wait(Handler handler) {
  auto* w = new waiter_impl<Handler>(std::move(handler), fallback_);
  bool ready = false;
  bool busy = false;
  {
    std::lock_guard lock(mutex_);
    if (waiter_ != nullptr) {
      busy = true;
    } else if (!pending_.empty() || finish_ != finish_reason::none) {
      ready = true;
    } else {
      auto slot = asio::get_associated_cancellation_slot(w->handler);
      if (slot.is_connected()) {
        slot.assign([this, w](asio::cancellation_type type) {
          if ((type & (asio::cancellation_type::terminal | asio::cancellation_type::partial |
                       asio::cancellation_type::total)) == asio::cancellation_type::none)
            return;
          {
            std::lock_guard inner(mutex_);
            if (waiter_ != w) return;  // being delivered already
            waiter_ = nullptr;
          }
          w->complete(asio::error::operation_aborted, {});
        });
      }
      waiter_ = w;
    }
  }
  if (busy) {
    w->complete(asio::error::already_started, {});
  } else if (ready) {
    deliver(w);
  }
}

}  // namespace detail

/// The consumer's handle on one request's tokens. Copyable; every copy reads
/// the same stream (one wait at a time).
class request_stream {
 public:
  request_stream() = default;
  request_stream(std::shared_ptr<detail::request_channel> channel, std::function<void(request_id)> cancel)
      : channel_(std::move(channel)), cancel_(std::move(cancel)) {}

  explicit operator bool() const noexcept { return static_cast<bool>(channel_); }
  request_id id() const noexcept { return channel_->id(); }

  /// Waits for the next tokens.
  ///
  /// Completion signature: `void(std::error_code, token_chunk)`. Success
  /// carries at least one token or the last chunk (finish set; refused and
  /// failed requests carry the error there, with no tokens). After the last
  /// chunk: asio::error::eof. A second wait while one is pending:
  /// asio::error::already_started. The handler runs on its associated
  /// executor (the engine's when it has none), never inline.
  /// Cancellation (terminal, partial, total): completes the wait with
  /// operation_aborted; the request keeps running (use cancel()).
  template <class Token>
  auto async_next(Token&& token) {
    return asio::async_initiate<Token, void(std::error_code, token_chunk)>(
        [](auto handler, std::shared_ptr<detail::request_channel> ch) { ch->start_wait(std::move(handler)); }, token,
        channel_);
  }

  /// Asks the engine to end the request: it finishes with
  /// finish_reason::cancelled and its KV pages are freed at the next step.
  void cancel() const {
    if (cancel_) cancel_(channel_->id());
  }

 private:
  std::shared_ptr<detail::request_channel> channel_;
  std::function<void(request_id)> cancel_;
};

}  // namespace cobatch::engine
