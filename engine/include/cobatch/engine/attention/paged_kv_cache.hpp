// paged_kv_cache: the KV cache of every layer, in pages of `page_size` tokens,
// in one device's memory, and the pool that hands its pages out.
//
// Layout of one layer (a contiguous block): [num_pages][2][page_size]
// [num_kv_heads][head_dim], K then V within a page, so that a page of a layer
// is one contiguous block of 2 x page_size x num_kv_heads x head_dim elements
// (FlashInfer's NHD layout with K and V of a page side by side). Layers
// follow each other. Elements are f32 or bf16; attention always accumulates
// in f32.
#pragma once

#include <cobatch/engine/error.hpp>
#include <cobatch/gpu/data_type.hpp>
#include <cobatch/gpu/device_memory.hpp>

#include <cstdint>
#include <span>
#include <system_error>
#include <vector>

namespace cobatch::engine {

struct kv_cache_config {
  std::int32_t num_layers = 1;
  std::int32_t num_pages = 0;
  std::int32_t page_size = 16;
  std::int32_t num_kv_heads = 0;
  std::int32_t head_dim = 128;  ///< 64 or 128
  gpu::data_type storage = gpu::data_type::f32;  ///< f32 or bf16

  /// Elements of one page of one layer (K and V).
  constexpr std::int64_t page_elements() const noexcept {
    return std::int64_t{2} * page_size * num_kv_heads * head_dim;
  }
  constexpr std::int64_t layer_elements() const noexcept { return page_elements() * num_pages; }
  constexpr std::int64_t bytes() const noexcept {
    return layer_elements() * num_layers * static_cast<std::int64_t>(gpu::size_of(storage));
  }
};

/// Checks every field (positive counts, head_dim 64 or 128, storage f32 or
/// bf16, byte size within int64). Throws engine_error naming the field and its
/// value: errc::invalid_argument, errc::unknown_mode (storage), errc::overflow.
void validate_kv_cache_config(const kv_cache_config& config);
void validate_kv_cache_config(const kv_cache_config& config, std::error_code& ec) noexcept;

/// The cache's device memory. Not copyable; movable.
class paged_kv_cache {
 public:
  /// Validates `config` and allocates its bytes on `d` (throws engine_error
  /// for a bad config, std::system_error when the memory does not fit).
  paged_kv_cache(gpu::device& d, const kv_cache_config& config);

  const kv_cache_config& config() const noexcept { return config_; }
  gpu::backend_kind backend() const noexcept { return memory_.backend(); }
  /// One layer's pages as bytes (layer in [0, num_layers); unchecked).
  gpu::device_span<std::byte> layer(std::int32_t layer) const noexcept;
  /// All layers.
  gpu::device_span<std::byte> bytes() const noexcept { return memory_.as<std::byte>(); }

 private:
  kv_cache_config config_;
  gpu::device_buffer memory_;
};

/// Hands out page indices of a cache of `num_pages` pages (host side, one
/// thread). allocate() and release() cost O(pages moved) and do not allocate
/// once the pool is built.
class page_pool {
 public:
  explicit page_pool(std::int32_t num_pages);

  std::int32_t num_pages() const noexcept { return num_pages_; }
  std::int32_t available() const noexcept { return static_cast<std::int32_t>(free_.size()); }

  /// Appends `count` free pages to `out`; throws engine_error
  /// (errc::no_capacity) naming count and available(), taking nothing,
  /// when fewer are free.
  void allocate(std::int32_t count, std::vector<std::int32_t>& out);
  /// Returns pages to the pool. Throws engine_error (errc::invalid_argument)
  /// for an index out of range or one that is already free, returning none.
  void release(std::span<const std::int32_t> pages);

  /// Pages a sequence of `len` tokens needs.
  static constexpr std::int32_t pages_for(std::int64_t len, std::int32_t page_size) noexcept {
    return static_cast<std::int32_t>((len + page_size - 1) / page_size);
  }

 private:
  std::int32_t num_pages_;
  std::vector<std::int32_t> free_;
  std::vector<std::uint8_t> in_use_;
};

}  // namespace cobatch::engine
