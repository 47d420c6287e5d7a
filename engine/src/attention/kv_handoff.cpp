#include "cobatch/engine/attention/kv_handoff.hpp"

#include "attention_check.hpp"
#include "kv_pool_args.hpp"
#include "message.hpp"

#include <cobatch/gpu/copy.hpp>
#include <cobatch/gpu/kernels/attention_kernels.hpp>

#include <algorithm>
#include <string>
#include <vector>

namespace cobatch::engine {

namespace kn = gpu::kernels;

struct kv_handoff::state {
  // Per peer of the other group, in peer order: its tokens' slots on this
  // rank (back to back) and where its message sits in the staging buffer.
  std::vector<std::int32_t> slots;
  std::vector<std::size_t> slot_offset;  // peers + 1
  std::vector<std::size_t> stage_offset;  // elements, peers + 1
  gpu::device_buffer staging;
  gpu::device_buffer device_slots;
  bool planned = false;
};

namespace {
bool within(std::int32_t r, std::int32_t first, std::int32_t count) noexcept { return r >= first && r < first + count; }
}  // namespace

kv_handoff::kv_handoff(gpu::device& device, paged_kv_cache& cache, const gpu::communicator& comm,
                       kv_handoff_config config)
    : device_(&device), cache_(&cache), comm_(&comm), config_(config), state_(std::make_unique<state>()) {
  config_.prefill.rank = 0;
  config_.decode.rank = 0;
  validate_dcp_layout(config_.prefill, "kv_handoff prefill group");
  validate_dcp_layout(config_.decode, "kv_handoff decode group");
  const std::int32_t n = comm.size();
  const auto& p = config_;
  if (p.prefill_first < 0 || p.prefill_first + p.prefill.world > n) {
    throw_engine_error(errc::invalid_argument,
                       detail::cat("kv_handoff: prefill ranks [", p.prefill_first, ", ", p.prefill_first + p.prefill.world,
                                   ") do not fit a communicator of ", n, " ranks"));
  }
  if (p.decode_first < 0 || p.decode_first + p.decode.world > n) {
    throw_engine_error(errc::invalid_argument,
                       detail::cat("kv_handoff: decode ranks [", p.decode_first, ", ", p.decode_first + p.decode.world,
                                   ") do not fit a communicator of ", n, " ranks"));
  }
  if (p.prefill_first < p.decode_first + p.decode.world && p.decode_first < p.prefill_first + p.prefill.world) {
    throw_engine_error(errc::invalid_argument,
                       detail::cat("kv_handoff: prefill ranks [", p.prefill_first, ", ", p.prefill_first + p.prefill.world,
                                   ") and decode ranks [", p.decode_first, ", ", p.decode_first + p.decode.world,
                                   ") overlap"));
  }
  const std::int32_t me = comm.rank();
  if (within(me, p.prefill_first, p.prefill.world)) {
    role_ = role::prefill;
    group_rank_ = me - p.prefill_first;
  } else if (within(me, p.decode_first, p.decode.world)) {
    role_ = role::decode;
    group_rank_ = me - p.decode_first;
  }
}

kv_handoff::~kv_handoff() = default;

void kv_handoff::plan(std::span<const std::int32_t> seq_lens, const page_table_view& pages) {
  state& st = *state_;
  st.planned = false;
  if (seq_lens.empty()) throw_engine_error(errc::empty_batch, "kv_handoff::plan: no requests");
  const kv_cache_config& cc = cache_->config();
  const std::int32_t ps = cc.page_size;
  const bool sender = role_ == role::prefill;
  const dcp_layout mine_layout = sender ? config_.prefill : config_.decode;
  const dcp_layout other = sender ? config_.decode : config_.prefill;
  const std::int32_t peers = role_ == role::none ? 0 : other.world;
  st.slots.clear();
  st.slot_offset.assign(static_cast<std::size_t>(peers) + 1, 0);
  st.stage_offset.assign(static_cast<std::size_t>(peers) + 1, 0);
  if (role_ == role::none) {
    st.planned = true;
    return;
  }
  const auto indptr = pages.indptr();
  if (indptr.size() != seq_lens.size() + 1) {
    throw_engine_error(errc::length_mismatch, detail::cat("kv_handoff::plan: page table indptr has ", indptr.size(),
                                                          " entries for ", seq_lens.size(), " requests"));
  }
  if (indptr[0] != 0 || static_cast<std::size_t>(indptr.back()) > pages.indices().size()) {
    throw_engine_error(errc::length_mismatch, "kv_handoff::plan: page table indptr does not start at 0 or runs past "
                                              "its indices");
  }
  dcp_layout me = mine_layout;
  me.rank = group_rank_;
  for (std::size_t i = 0; i < seq_lens.size(); ++i) {
    if (seq_lens[i] < 0) {
      throw_engine_error(errc::negative_length, detail::cat("kv_handoff::plan: seq_lens[", i, "]=", seq_lens[i]));
    }
    const std::int64_t len = me.local_length(seq_lens[i]);
    const std::int64_t need = (len + ps - 1) / ps;
    const std::int64_t have = indptr[i + 1] - indptr[i];
    if (have != need) {
      throw_engine_error(errc::length_mismatch,
                         detail::cat("kv_handoff::plan: request ", i, " has ", have, " pages on this rank; its shard of ",
                                     seq_lens[i], " tokens holds ", len, ", which need ", need));
    }
    for (std::int32_t k = indptr[i]; k < indptr[i + 1]; ++k) {
      const std::int32_t pg = pages.indices()[static_cast<std::size_t>(k)];
      if (pg < 0 || pg >= cc.num_pages) {
        throw_engine_error(errc::invalid_argument, detail::cat("kv_handoff::plan: request ", i, "'s page ",
                                                               k - indptr[i], " is ", pg, ", outside [0, ",
                                                               cc.num_pages, ")"));
      }
    }
  }
  // Tokens this rank shares with each peer, peer by peer, ascending within.
  for (std::int32_t q = 0; q < peers; ++q) {
    for (std::size_t i = 0; i < seq_lens.size(); ++i) {
      const auto req_pages = pages.pages(static_cast<std::int32_t>(i));
      for (std::int64_t t = 0; t < seq_lens[i]; ++t) {
        if (me.owner(t) != me.rank || other.owner(t) != q) continue;
        const std::int64_t l = me.local_position(t);
        st.slots.push_back(req_pages[static_cast<std::size_t>(l / ps)] * ps + static_cast<std::int32_t>(l % ps));
      }
    }
    st.slot_offset[static_cast<std::size_t>(q) + 1] = st.slots.size();
  }
  const std::size_t row = static_cast<std::size_t>(cc.num_kv_heads) * static_cast<std::size_t>(cc.head_dim);
  for (std::int32_t q = 0; q < peers; ++q) {
    const std::size_t n = st.slot_offset[static_cast<std::size_t>(q) + 1] - st.slot_offset[static_cast<std::size_t>(q)];
    st.stage_offset[static_cast<std::size_t>(q) + 1] =
        st.stage_offset[static_cast<std::size_t>(q)] + static_cast<std::size_t>(cc.num_layers) * n * 2 * row;
  }
  const std::size_t elem = gpu::size_of(cc.storage);
  const std::size_t stage_bytes = std::max<std::size_t>(st.stage_offset.back() * elem, 256);
  if (!st.staging || st.staging.size() < stage_bytes) st.staging = gpu::allocate(*device_, stage_bytes);
  const std::size_t slot_bytes = std::max<std::size_t>(st.slots.size() * sizeof(std::int32_t), 256);
  if (!st.device_slots || st.device_slots.size() < slot_bytes) st.device_slots = gpu::allocate(*device_, slot_bytes);
  st.planned = true;
}

std::int64_t kv_handoff::planned_bytes() const noexcept {
  return static_cast<std::int64_t>(state_->stage_offset.empty() ? 0 : state_->stage_offset.back()) *
         static_cast<std::int64_t>(gpu::size_of(cache_->config().storage));
}

void kv_handoff::enqueue_transfer(gpu::stream_ref s) {
  state& st = *state_;
  if (!st.planned) throw_engine_error(errc::invalid_argument, "kv_handoff::enqueue_transfer: not planned");
  if (role_ == role::none) return;
  const kv_cache_config& cc = cache_->config();
  const gpu::backend_kind backend = cache_->backend();
  const std::size_t elem = gpu::size_of(cc.storage);
  const std::int64_t row = static_cast<std::int64_t>(cc.num_kv_heads) * cc.head_dim;
  auto* staging = static_cast<std::byte*>(st.staging.data());
  auto* slots = static_cast<std::int32_t*>(st.device_slots.data());
  gpu::detail::copy_bytes_async(backend, gpu::copy_direction::host_to_device, slots, st.slots.data(),
                                st.slots.size() * sizeof(std::int32_t), s);
  const std::int32_t peers = static_cast<std::int32_t>(st.slot_offset.size()) - 1;
  const bool sender = role_ == role::prefill;
  const std::int32_t other_first = sender ? config_.decode_first : config_.prefill_first;
  auto for_each_layer_block = [&](std::int32_t q, auto&& fn) {
    const std::size_t n = st.slot_offset[static_cast<std::size_t>(q) + 1] - st.slot_offset[static_cast<std::size_t>(q)];
    if (n == 0) return;
    for (std::int32_t l = 0; l < cc.num_layers; ++l) {
      std::byte* block = staging + (st.stage_offset[static_cast<std::size_t>(q)] +
                                    static_cast<std::size_t>(l) * n * 2 * static_cast<std::size_t>(row)) * elem;
      fn(l, block, static_cast<std::int32_t>(n), slots + st.slot_offset[static_cast<std::size_t>(q)]);
    }
  };
  // Both halves copy the same rows between the cache and the staging
  // messages, in opposite directions: the sender gathers before the sends,
  // the receiver scatters after the receives.
  auto copy_rows = [&] {
    for (std::int32_t q = 0; q < peers; ++q) {
      for_each_layer_block(q, [&](std::int32_t l, std::byte* block, std::int32_t n, const std::int32_t* sl) {
        auto fill = [&](auto& a) {
          detail::set_pool(a, cc, cache_->layer(l).data());
          a.k = block;
          a.v = block + static_cast<std::size_t>(row) * elem;
          a.row_stride = 2 * row;
          a.slots = sl;
          a.num_rows = n;
        };
        if (sender) {
          kn::kv_gather_args g;
          fill(g);
          kn::enqueue_kv_gather(backend, g, s);
        } else {
          kn::kv_scatter_args a;
          fill(a);
          kn::enqueue_kv_scatter(backend, a, s);
        }
      });
    }
  };
  if (sender) copy_rows();
  {
    gpu::group_guard group(*comm_);
    for (std::int32_t q = 0; q < peers; ++q) {
      const std::size_t count = st.stage_offset[static_cast<std::size_t>(q) + 1] - st.stage_offset[static_cast<std::size_t>(q)];
      if (count == 0) continue;
      std::byte* buf = staging + st.stage_offset[static_cast<std::size_t>(q)] * elem;
      if (sender) {
        comm_->send(group, buf, count, cc.storage, other_first + q, s);
      } else {
        comm_->recv(group, buf, count, cc.storage, other_first + q, s);
      }
    }
    group.end();
  }
  if (!sender) copy_rows();
  bytes_moved_ += planned_bytes();
}

}  // namespace cobatch::engine
