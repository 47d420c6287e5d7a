// A move-only std::function<void()> (std::move_only_function is C++23).
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

namespace cobatch::gpu::detail {

class unique_function {
 public:
  unique_function() noexcept = default;
  template <typename F>
    requires(!std::is_same_v<std::decay_t<F>, unique_function> && std::is_invocable_v<std::decay_t<F>&>)
  unique_function(F&& f) : impl_(std::make_unique<model<std::decay_t<F>>>(std::forward<F>(f))) {}

  explicit operator bool() const noexcept { return static_cast<bool>(impl_); }
  void operator()() { impl_->call(); }

 private:
  struct concept_ {
    virtual ~concept_() = default;
    virtual void call() = 0;
  };
  template <typename F>
  struct model final : concept_ {
    explicit model(F&& fn) : f(std::move(fn)) {}
    explicit model(const F& fn) : f(fn) {}
    void call() override { f(); }
    F f;
  };
  std::unique_ptr<concept_> impl_;
};

}  // namespace cobatch::gpu::detail
