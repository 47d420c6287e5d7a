// Private to the engine's attention sources: the pool half of the KV row
// kernels' arguments, filled in one place for the append, the hand-off's
// gather and its scatter.
#pragma once

#include <cobatch/engine/attention/paged_kv_cache.hpp>
#include <cobatch/gpu/kernels/attention_args.hpp>

#include <type_traits>

namespace cobatch::engine::detail {

/// Points `args` at one layer's pages of a cache of this configuration.
template <class Pages>
void set_pool(gpu::kernels::kv_pool_args<Pages>& args, const kv_cache_config& cache,
              std::type_identity_t<Pages>* layer_pages) noexcept {
  args = {cache.storage, layer_pages, cache.num_pages, cache.page_size, cache.num_kv_heads, cache.head_dim};
}

}  // namespace cobatch::engine::detail
