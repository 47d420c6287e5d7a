#include "llama_model.hpp"

#include <cobatch/engine/attention/dcp.hpp>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#if COBATCH_MODEL_WITH_CUDA
#include "cuda/cuda_kernels.hpp"
#endif

namespace cobatch::model {

std::unique_ptr<llama_kernels> make_llama_kernels(gpu::device& device, const llama_weights& weights,
                                                  std::int32_t blas_threads) {
  switch (device.backend()) {
    case gpu::backend_kind::host:
      return make_host_kernels(weights, blas_threads);
    case gpu::backend_kind::cuda:
#if COBATCH_MODEL_WITH_CUDA
      return make_cuda_kernels(device, weights);
#else
      break;
#endif
  }
  throw std::invalid_argument("make_llama_kernels: device " + device.name() +
                              " is of a backend this build of cobatch_reference_model has no kernels for "
                              "(CUDA needs COBATCH_CUDA=ON or AUTO with the toolkit found)");
}

// One micro-batch slot: its activations (device memory of this rank), its
// attention wrapper, and two attention plans and page tables so that the
// step being planned never overwrites the one still on the stream.
struct llama_model::slot {
  engine::ubatch_io io;
  llama_activations a;
  std::unique_ptr<engine::batch_attention> attention;
  engine::attention_plan plans[2];
  std::unique_ptr<engine::page_table> tables[2];
  std::int32_t parity = 0;
  std::uint64_t last_step = 0;
};

llama_model::llama_model(gpu::device& device, const llama_weights& weights, llama_rank_options options)
    : device_(&device),
      weights_(&weights),
      options_(options),
      world_(options.group != nullptr ? options.group->world() : 1),
      cache_(device, engine::kv_cache_config{weights.config.num_layers, options.num_pages, options.page_size,
                                             weights.config.num_kv_heads, weights.config.head_dim,
                                             gpu::data_type::f32}) {
  validate(weights.config);
  if (options.rank < 0 || options.rank >= world_)
    throw std::invalid_argument("llama_model: rank " + std::to_string(options.rank) + " is not in a DCP group of " +
                                std::to_string(world_));
  if (options.group != nullptr && device.backend() != gpu::backend_kind::host)
    throw std::invalid_argument("llama_model: a DCP group's communicators are the host backend's; device " +
                                device.name() + " is not a host device");
  kernels_ = make_llama_kernels(device, weights, options.blas_threads);
  const llama_config& c = weights.config;
  stages_.push_back({op::embed_pre, 0});
  for (std::int32_t l = 0; l < c.num_layers; ++l) {
    stages_.push_back({op::attend, l});
    if (world_ > 1) {
      stages_.push_back({op::exchange, l});
      stages_.push_back({op::merge, l});
    }
    stages_.push_back({op::post, l});
  }
  for (const stage& s : stages_) {
    kinds_.push_back(s.what == op::embed_pre || s.what == op::post ? engine::stage_kind::graph
                     : s.what == op::exchange                      ? engine::stage_kind::collective
                                                                   : engine::stage_kind::eager);
  }
}

llama_model::~llama_model() = default;

engine::model_info llama_model::info() const {
  const llama_config& c = weights_->config;
  const std::uint64_t per_token = 4ull * (3ull * c.hidden + 2ull * c.q_dim() + 2ull * c.kv_dim() + 2ull * c.intermediate);
  return {c.vocab_size, c.max_context, c.num_layers, per_token};
}

void llama_model::bind(const engine::ubatch_io& io) {
  if (slots_.size() <= static_cast<std::size_t>(io.slot)) slots_.resize(static_cast<std::size_t>(io.slot) + 1);
  auto s = std::make_unique<slot>();
  const llama_config& c = weights_->config;
  const auto T = static_cast<std::size_t>(io.capacity_tokens);
  const auto R = static_cast<std::size_t>(io.capacity_reqs);
  s->io = io;
  s->a.x = gpu::typed_buffer<float>(*device_, T * static_cast<std::size_t>(c.hidden));
  s->a.xn = gpu::typed_buffer<float>(*device_, T * static_cast<std::size_t>(c.hidden));
  s->a.q = gpu::typed_buffer<float>(*device_, T * static_cast<std::size_t>(c.q_dim()));
  s->a.attn = gpu::typed_buffer<float>(*device_, T * static_cast<std::size_t>(c.q_dim()));
  s->a.k = gpu::typed_buffer<float>(*device_, T * static_cast<std::size_t>(c.kv_dim()));
  s->a.v = gpu::typed_buffer<float>(*device_, T * static_cast<std::size_t>(c.kv_dim()));
  s->a.gate = gpu::typed_buffer<float>(*device_, T * static_cast<std::size_t>(c.intermediate));
  s->a.up = gpu::typed_buffer<float>(*device_, T * static_cast<std::size_t>(c.intermediate));
  s->a.rows = gpu::typed_buffer<float>(*device_, R * static_cast<std::size_t>(c.hidden));
  s->a.logits = gpu::typed_buffer<float>(*device_, R * static_cast<std::size_t>(c.vocab_size));
  engine::attention_config ac;
  ac.num_qo_heads = c.num_heads;
  ac.softmax_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  ac.dcp = engine::dcp_layout{world_, options_.rank, 1};
  ac.merge = engine::dcp_merge::all_gather;
  s->attention = std::make_unique<engine::batch_attention>(
      *device_, cache_, ac, options_.group != nullptr ? &options_.group->comm(options_.rank) : nullptr);
  for (auto& t : s->tables) t = std::make_unique<engine::page_table>(options_.num_pages);
  kernels_->bind(s->a, io);
  slots_[static_cast<std::size_t>(io.slot)] = std::move(s);
}

void llama_model::plan(const engine::step_plan& step, std::int32_t, const engine::ubatch& slice,
                       const engine::ubatch_io& io, gpu::stream_ref s) {
  if (options_.group != nullptr) options_.group->renew_if_aborted();
  slot& sl = *slots_.at(static_cast<std::size_t>(io.slot));
  if (step.step != sl.last_step) {
    sl.parity ^= 1;
    sl.last_step = step.step;
  }
  engine::page_table& table = *sl.tables[sl.parity];
  table.clear();
  const engine::dcp_layout layout{world_, options_.rank, 1};
  for (std::int32_t j = slice.req_begin; j < slice.req_end; ++j) {
    const std::int32_t seq = slice.seq_lens[static_cast<std::size_t>(j - slice.req_begin)];
    const std::int32_t pages = engine::page_pool::pages_for(layout.local_length(seq), options_.page_size);
    // This rank's shard uses a prefix of the row; a short row is reported by
    // the attention plan, which checks page counts against seq_lens.
    const auto first = static_cast<std::size_t>(step.block_begin[static_cast<std::size_t>(j)]);
    const auto held = static_cast<std::size_t>(step.block_end[static_cast<std::size_t>(j)]) - first;
    table.add_request(step.block_table.subspan(first, std::min(held, static_cast<std::size_t>(pages))));
  }
  engine::attention_plan& p = sl.plans[sl.parity];
  sl.attention->plan({slice.as_batch(), table.view()}, p);
  sl.attention->reserve(p, s);
}

engine::attention_io llama_model::attention_io_of(slot& s, std::int32_t layer) const {
  const llama_config& c = weights_->config;
  const auto real = static_cast<std::size_t>(s.plans[s.parity].num_tokens());
  engine::attention_io a;
  a.layer = layer;
  a.q = s.a.q.span().first(real * static_cast<std::size_t>(c.q_dim()));
  a.new_k = s.a.k.span().first(real * static_cast<std::size_t>(c.kv_dim()));
  a.new_v = s.a.v.span().first(real * static_cast<std::size_t>(c.kv_dim()));
  a.out = s.a.attn.span().first(real * static_cast<std::size_t>(c.q_dim()));
  return a;
}

void llama_model::enqueue_stage(std::int32_t index, const engine::ubatch_io& io, std::int32_t run_tokens,
                                gpu::stream_ref s) {
  slot* sl = slots_.at(static_cast<std::size_t>(io.slot)).get();
  const stage st = stages_.at(static_cast<std::size_t>(index));
  switch (st.what) {
    case op::embed_pre:
      kernels_->embed(sl->a, sl->io, run_tokens, s);
      kernels_->pre_attention(sl->a, sl->io, 0, run_tokens, s);
      return;
    case op::attend:
      sl->attention->enqueue_phase(sl->plans[sl->parity], attention_io_of(*sl, st.layer), 0, s);
      return;
    case op::exchange:
      sl->attention->enqueue_phase(sl->plans[sl->parity], attention_io_of(*sl, st.layer), 1, s);
      return;
    case op::merge:
      sl->attention->enqueue_phase(sl->plans[sl->parity], attention_io_of(*sl, st.layer), 2, s);
      return;
    case op::post:
      kernels_->post_attention(sl->a, st.layer, run_tokens, s);
      if (st.layer + 1 == weights_->config.num_layers) {
        kernels_->head_and_sample(sl->a, sl->io, run_tokens, s);
      } else {
        kernels_->pre_attention(sl->a, sl->io, st.layer + 1, run_tokens, s);
      }
      return;
  }
}

void llama_model::recover() {
  if (options_.group != nullptr) options_.group->abort();
}

}  // namespace cobatch::model
