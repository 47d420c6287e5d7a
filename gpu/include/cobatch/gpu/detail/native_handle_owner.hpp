// The owning half of a backend object's owning/`_ref` handle pair (stream and
// stream_ref, event and event_ref): holding the backend object, lending a
// `_ref`, and handing the native object back. Each owning handle derives from
// it and adds its own operations, so the two stay alike by construction.
#pragma once

#include "cobatch/gpu/error.hpp"

#include <cstddef>
#include <memory>
#include <string>
#include <system_error>
#include <utility>

namespace cobatch::gpu::detail {

/// What a backend object's default release_native_handle() throws: the
/// backend (the host one) has no native object to give up. `api` names the
/// call, e.g. "stream::release()".
[[noreturn]] inline void throw_no_native_handle(const char* api, const char* objects) {
  throw std::system_error(make_error_code(errc::invalid_argument),
                          std::string("cobatch: ") + api + ": this backend's " + objects +
                              " have no native handle to hand over");
}

/// `Impl` is the backend interface (with release_native_handle()), `Ref` the
/// non-owning handle, constructible from `Impl&`.
template <typename Impl, typename Ref>
class native_handle_owner {
 public:
  native_handle_owner() noexcept = default;
  explicit native_handle_owner(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
  native_handle_owner(std::nullptr_t) = delete;

  explicit operator bool() const noexcept { return static_cast<bool>(impl_); }
  Ref ref() const noexcept { return Ref(*impl_); }
  operator Ref() const noexcept { return ref(); }

  /// Hands the native object back: the caller destroys it from now on, and
  /// this handle is empty. Null for an empty handle; throws
  /// std::system_error (errc::invalid_argument), leaving the handle as it
  /// was, for a backend without native objects.
  [[nodiscard]] void* release() {
    if (!impl_) return nullptr;
    void* native = impl_->release_native_handle();
    impl_.reset();
    return native;
  }

 protected:
  // Only the owning handles derived from it are destroyed, never through a
  // pointer to this base.
  ~native_handle_owner() = default;
  native_handle_owner(native_handle_owner&&) noexcept = default;
  native_handle_owner& operator=(native_handle_owner&&) noexcept = default;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace cobatch::gpu::detail
