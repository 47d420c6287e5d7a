#include "cobatch/engine/attention/lse.hpp"

#include "message.hpp"

#include <cobatch/gpu/kernels/attention_kernels.hpp>

#include <cstdint>
#include <string>

namespace cobatch::engine {
namespace {

using detail::fail;
using detail::fault;

fault check_merge(const lse_shards_view& s, std::span<float> out, std::span<float> out_lse, std::string* detail) {
  if (s.num_shards < 1) return fail(detail, errc::invalid_argument, "merge_lse: num_shards=", s.num_shards, " < 1");
  if (s.rows < 0) return fail(detail, errc::invalid_argument, "merge_lse: rows=", s.rows, " is negative");
  if (s.head_dim < 1) return fail(detail, errc::invalid_argument, "merge_lse: head_dim=", s.head_dim, " < 1");
  const auto rows = static_cast<std::size_t>(s.rows);
  const auto d = static_cast<std::size_t>(s.head_dim);
  const auto n = static_cast<std::size_t>(s.num_shards);
  if (s.out.size() != n * rows * d) {
    return fail(detail, errc::length_mismatch, "merge_lse: shards' out holds ", s.out.size(), " floats; ", n,
                " shards x ", rows, " rows x ", d, " need ", n * rows * d);
  }
  if (s.lse.size() != n * rows) {
    return fail(detail, errc::length_mismatch, "merge_lse: shards' lse holds ", s.lse.size(), " floats; ", n,
                " shards x ", rows, " rows need ", n * rows);
  }
  if (out.size() != rows * d) {
    return fail(detail, errc::length_mismatch, "merge_lse: out holds ", out.size(), " floats; ", rows, " rows x ", d,
                " need ", rows * d);
  }
  if (out_lse.size() != rows) {
    return fail(detail, errc::length_mismatch, "merge_lse: out_lse holds ", out_lse.size(), " floats; need ", rows);
  }
  return {};
}

void run_merge(const lse_shards_view& s, std::span<float> out, std::span<float> out_lse, lse_base out_base) {
  gpu::kernels::lse_merge_args a;
  a.num_shards = s.num_shards;
  a.rows = s.rows;
  a.head_dim = s.head_dim;
  a.shard_out = s.out.data();
  a.shard_out_stride = s.rows * s.head_dim;
  a.shard_lse = s.lse.data();
  a.shard_lse_stride = s.rows;
  a.lse_in_scale = 1.0f / lse_scale_from_natural(s.base);
  a.out = out.data();
  a.out_type = gpu::data_type::f32;
  a.out_lse = out_lse.data();
  a.lse_out_scale = lse_scale_from_natural(out_base);
  gpu::kernels::host::lse_merge(a);
}

}  // namespace

void merge_lse(const lse_shards_view& shards, std::span<float> out, std::span<float> out_lse, lse_base out_base) {
  std::string text;
  if (const fault f = check_merge(shards, out, out_lse, &text)) throw_engine_error(f.code, text);
  run_merge(shards, out, out_lse, out_base);
}

void merge_lse(const lse_shards_view& shards, std::span<float> out, std::span<float> out_lse, lse_base out_base,
               std::error_code& ec) noexcept {
  ec.clear();
  if (const fault f = check_merge(shards, out, out_lse, nullptr)) {
    ec = make_error_code(f.code);
    return;
  }
  run_merge(shards, out, out_lse, out_base);
}

}  // namespace cobatch::engine
