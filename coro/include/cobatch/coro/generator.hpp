// generator<T>: a synchronous coroutine sequence, for iterating micro-batches
// (`for (auto& mb : ctx.micro_batches())`) without materialising them.
#pragma once

#include <coroutine>
#include <exception>
#include <iterator>
#include <memory>
#include <type_traits>
#include <utility>

namespace cobatch::coro {

/// A lazy, single-pass range of T produced by `co_yield`. Exceptions thrown in
/// the body propagate out of the iterator increment that resumed it.
template <typename T>
class [[nodiscard]] generator {
 public:
  using value_type = std::remove_cvref_t<T>;
  using reference = std::conditional_t<std::is_reference_v<T>, T, const value_type&>;

  struct promise_type {
    const value_type* current = nullptr;
    std::exception_ptr error;

    generator get_return_object() noexcept {
      return generator{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    std::suspend_always final_suspend() noexcept { return {}; }
    // Yielding an lvalue hands out its address; an rvalue lives in the
    // coroutine frame until the next resumption, so its address is stable too.
    std::suspend_always yield_value(const value_type& value) noexcept {
      current = std::addressof(value);
      return {};
    }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { error = std::current_exception(); }
    template <typename U>
    std::suspend_never await_transform(U&&) = delete;  // synchronous only
  };

  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using difference_type = std::ptrdiff_t;
    using value_type = generator::value_type;

    iterator() noexcept = default;
    explicit iterator(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}

    reference operator*() const noexcept { return *h_.promise().current; }
    const value_type* operator->() const noexcept { return h_.promise().current; }
    iterator& operator++() {
      advance(h_);
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& it, std::default_sentinel_t) noexcept {
      return !it.h_ || it.h_.done();
    }

   private:
    std::coroutine_handle<promise_type> h_;
  };

  generator() noexcept = default;
  generator(generator&& other) noexcept : h_(std::exchange(other.h_, {})) {}
  generator& operator=(generator&& other) noexcept {
    if (this != &other) {
      if (h_) h_.destroy();
      h_ = std::exchange(other.h_, {});
    }
    return *this;
  }
  ~generator() {
    if (h_) h_.destroy();
  }

  iterator begin() {
    advance(h_);
    return iterator{h_};
  }
  std::default_sentinel_t end() const noexcept { return {}; }

 private:
  explicit generator(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}
  static void advance(std::coroutine_handle<promise_type> h) {
    h.resume();
    if (h.promise().error) std::rethrow_exception(std::exchange(h.promise().error, {}));
  }
  std::coroutine_handle<promise_type> h_;
};

}  // namespace cobatch::coro
