// lse: log-sum-exp values of attention, with their base as part of the value,
// and the N-way merge of attention states on the host.
//
// An attention state over a set of KV tokens is the pair (o, lse): o the
// softmax-weighted sum of V, lse = log(sum exp(q.k * scale)). Two states over
// disjoint sets merge exactly:
//   lse = log(exp(lse_1) + exp(lse_2)),  o = exp(lse_1 - lse) o_1 + exp(lse_2 - lse) o_2.
// FlashInfer stores lse in base 2 (log2), vLLM and FlashAttention in base e:
// which one a buffer holds is never left to convention here.
#pragma once

#include <cobatch/gpu/device_memory.hpp>

#include <cstdint>
#include <span>
#include <system_error>

namespace cobatch::engine {

enum class lse_base : std::uint8_t {
  e,    ///< natural logarithm (vLLM, FlashAttention)
  two,  ///< log2 (FlashInfer)
};

/// The factor that turns a natural-log LSE into one of `base` (and whose
/// inverse turns it back).
constexpr float lse_scale_from_natural(lse_base base) noexcept {
  return base == lse_base::two ? 1.4426950408889634f : 1.0f;
}

/// A device buffer of LSE values in a stated base. Made only through the
/// named constructors, so every site that writes or reads one names the base.
class lse_ref {
 public:
  lse_ref() noexcept = default;
  static lse_ref base_e(gpu::device_span<float> values) noexcept { return lse_ref(values, lse_base::e); }
  static lse_ref base_2(gpu::device_span<float> values) noexcept { return lse_ref(values, lse_base::two); }

  gpu::device_span<float> values() const noexcept { return values_; }
  lse_base base() const noexcept { return base_; }
  std::size_t size() const noexcept { return values_.size(); }
  bool empty() const noexcept { return values_.empty(); }

 private:
  lse_ref(gpu::device_span<float> values, lse_base base) noexcept : values_(values), base_(base) {}
  gpu::device_span<float> values_;
  lse_base base_ = lse_base::e;
};

/// Host memory of attention states: `num_shards` shards, each `rows` rows
/// (tokens x heads) of `head_dim` outputs, shard-major, and their LSEs.
struct lse_shards_view {
  std::span<const float> out;  ///< [num_shards][rows][head_dim]
  std::span<const float> lse;  ///< [num_shards][rows], in `base`
  lse_base base = lse_base::e;
  std::int32_t num_shards = 0;
  std::int64_t rows = 0;
  std::int32_t head_dim = 0;
};

/// Merges the shards row by row on the calling thread (the host kernel the
/// host backend runs; the reference for the CUDA merge).
///
/// Empty shards: a shard whose LSE is -inf (no tokens), +inf or NaN (an
/// overflow or an uninitialised slot upstream) contributes nothing; a row
/// with no finite shard gets o = 0 and lse = -inf. No NaN is ever written.
///
/// Throws engine_error: errc::invalid_argument for num_shards < 1, rows < 0 or
/// head_dim < 1; errc::length_mismatch when a span's size is not what the
/// counts say (naming both).
void merge_lse(const lse_shards_view& shards, std::span<float> out, std::span<float> out_lse, lse_base out_base);
void merge_lse(const lse_shards_view& shards, std::span<float> out, std::span<float> out_lse, lse_base out_base,
               std::error_code& ec) noexcept;

}  // namespace cobatch::engine
