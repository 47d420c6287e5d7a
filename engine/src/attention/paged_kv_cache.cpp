#include "cobatch/engine/attention/paged_kv_cache.hpp"

#include "attention_check.hpp"
#include "message.hpp"

#include <algorithm>
#include <limits>
#include <string>

namespace cobatch::engine {

namespace detail {
fault check_kv_cache_config(const kv_cache_config& c, std::string* detail) {
  if (c.num_layers < 1) return fail(detail, errc::invalid_argument, "kv_cache_config: num_layers=", c.num_layers, " < 1");
  if (c.num_pages < 1) return fail(detail, errc::invalid_argument, "kv_cache_config: num_pages=", c.num_pages, " < 1");
  if (c.page_size < 1) return fail(detail, errc::invalid_argument, "kv_cache_config: page_size=", c.page_size, " < 1");
  if (c.num_kv_heads < 1) {
    return fail(detail, errc::invalid_argument, "kv_cache_config: num_kv_heads=", c.num_kv_heads, " < 1");
  }
  if (c.head_dim != 64 && c.head_dim != 128) {
    return fail(detail, errc::invalid_argument, "kv_cache_config: head_dim=", c.head_dim, " (64 or 128 are supported)");
  }
  if (c.storage != gpu::data_type::f32 && c.storage != gpu::data_type::bf16) {
    return fail(detail, errc::unknown_mode, "kv_cache_config: storage=", gpu::name_of(c.storage),
                " (f32 or bf16 are supported)");
  }
  // Every factor is at most 2^31; check the product step by step.
  const double bytes = 2.0 * c.page_size * c.num_kv_heads * c.head_dim * static_cast<double>(c.num_pages) *
                       c.num_layers * static_cast<double>(gpu::size_of(c.storage));
  if (bytes > static_cast<double>(std::numeric_limits<std::int64_t>::max() / 2)) {
    return fail(detail, errc::overflow, "kv_cache_config: ", bytes, " bytes do not fit int64");
  }
  if (static_cast<double>(c.page_size) * c.num_pages > static_cast<double>(std::numeric_limits<std::int32_t>::max())) {
    return fail(detail, errc::overflow, "kv_cache_config: num_pages=", c.num_pages, " x page_size=", c.page_size,
                " slots exceed int32 slot numbers");
  }
  return {};
}
}  // namespace detail

void validate_kv_cache_config(const kv_cache_config& config) {
  std::string text;
  if (const auto f = detail::check_kv_cache_config(config, &text)) throw_engine_error(f.code, text);
}

void validate_kv_cache_config(const kv_cache_config& config, std::error_code& ec) noexcept {
  ec.clear();
  if (const auto f = detail::check_kv_cache_config(config, nullptr)) ec = make_error_code(f.code);
}

paged_kv_cache::paged_kv_cache(gpu::device& d, const kv_cache_config& config) : config_(config) {
  validate_kv_cache_config(config);
  memory_ = gpu::allocate(d, static_cast<std::size_t>(config.bytes()));
}

gpu::device_span<std::byte> paged_kv_cache::layer(std::int32_t layer) const noexcept {
  const auto layer_bytes = static_cast<std::size_t>(config_.layer_elements()) * gpu::size_of(config_.storage);
  return bytes().subspan(static_cast<std::size_t>(layer) * layer_bytes, layer_bytes);
}

page_pool::page_pool(std::int32_t num_pages) : num_pages_(num_pages) {
  if (num_pages < 1) throw_engine_error(errc::invalid_argument, detail::cat("page_pool: num_pages=", num_pages, " < 1"));
  free_.resize(static_cast<std::size_t>(num_pages));
  // Handed out from the back: page 0 first.
  for (std::int32_t i = 0; i < num_pages; ++i) free_[static_cast<std::size_t>(i)] = num_pages - 1 - i;
  in_use_.assign(static_cast<std::size_t>(num_pages), 0);
}

void page_pool::allocate(std::int32_t count, std::vector<std::int32_t>& out) {
  if (count < 0) throw_engine_error(errc::invalid_argument, detail::cat("page_pool::allocate: count=", count, " < 0"));
  if (count > available()) {
    throw_engine_error(errc::no_capacity,
                       detail::cat("page_pool::allocate: ", count, " pages asked for, ", available(), " free"));
  }
  for (std::int32_t i = 0; i < count; ++i) {
    const std::int32_t p = free_.back();
    free_.pop_back();
    in_use_[static_cast<std::size_t>(p)] = 1;
    out.push_back(p);
  }
}

void page_pool::release(std::span<const std::int32_t> pages) {
  // Pages being released are marked 2 while checking, so that a page named
  // twice is caught; on failure the marks are undone and nothing is released.
  std::size_t checked = 0;
  auto undo = [&] {
    for (std::size_t k = 0; k < checked; ++k) in_use_[static_cast<std::size_t>(pages[k])] = 1;
  };
  for (; checked < pages.size(); ++checked) {
    const std::int32_t p = pages[checked];
    if (p < 0 || p >= num_pages_) {
      undo();
      throw_engine_error(errc::invalid_argument, detail::cat("page_pool::release: page ", checked, " is ", p,
                                                             ", outside [0, num_pages=", num_pages_, ")"));
    }
    if (in_use_[static_cast<std::size_t>(p)] != 1) {
      undo();
      throw_engine_error(errc::invalid_argument, detail::cat("page_pool::release: page ", p, " is not in use"));
    }
    in_use_[static_cast<std::size_t>(p)] = 2;
  }
  for (const std::int32_t p : pages) {
    in_use_[static_cast<std::size_t>(p)] = 0;
    free_.push_back(p);
  }
}

}  // namespace cobatch::engine
