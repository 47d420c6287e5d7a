// Host backend: buffers counted against their device's memory budget.
#include "host_buffer.hpp"

#include <cstdlib>
#include <utility>

namespace cobatch::gpu::host {

void buffer::free_bytes::operator()(std::byte* p) const noexcept { std::free(p); }

buffer::buffer(std::unique_ptr<std::byte, free_bytes> data, std::size_t size, std::shared_ptr<accounting> owner) noexcept
    : data_(std::move(data)), size_(size), owner_(std::move(owner)) {}
buffer::buffer(buffer&& other) noexcept
    : data_(std::move(other.data_)), size_(std::exchange(other.size_, 0)), owner_(std::move(other.owner_)) {}
buffer& buffer::operator=(buffer&& other) noexcept {
  if (this != &other) {
    buffer dying(std::move(*this));
    data_ = std::move(other.data_);
    size_ = std::exchange(other.size_, 0);
    owner_ = std::move(other.owner_);
  }
  return *this;
}
buffer::~buffer() {
  if (owner_) {
    std::lock_guard lock(owner_->mutex);
    owner_->in_use -= size_;
  }
}

}  // namespace cobatch::gpu::host
