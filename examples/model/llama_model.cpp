#include "llama_model.hpp"

#include "sampling.hpp"

#include <cobatch/engine/attention/dcp.hpp>

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

extern "C" void openblas_set_num_threads(int);

namespace cobatch::model {

namespace {
// y[rows][out] = x[rows][in] * w[out][in]^T
void matmul(const float* x, const std::vector<float>& w, float* y, std::int32_t rows, std::int32_t in, std::int32_t out) {
  if (rows <= 0) return;
  if (rows == 1) {
    // One row (a lone decode): sgemm would first pack all of w, reading and
    // writing it once more than the product itself reads it.
    cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, w.data(), in, x, 1, 0.0f, y, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, out, in, 1.0f, x, in, w.data(), in, 0.0f, y, out);
}

void rms_norm(const float* x, const std::vector<float>& w, float* y, std::int32_t rows, std::int32_t n, float eps) {
  for (std::int32_t r = 0; r < rows; ++r) {
    const float* xr = x + static_cast<std::ptrdiff_t>(r) * n;
    float* yr = y + static_cast<std::ptrdiff_t>(r) * n;
    double ss = 0.0;
    for (std::int32_t i = 0; i < n; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const auto inv = static_cast<float>(1.0 / std::sqrt(ss / n + eps));
    for (std::int32_t i = 0; i < n; ++i) yr[i] = xr[i] * inv * w[static_cast<std::size_t>(i)];
  }
}
}  // namespace

// One micro-batch slot: its activations (device memory of this rank), its
// attention wrapper, and two attention plans and page tables so that the
// step being planned never overwrites the one still on the stream.
struct llama_model::slot {
  engine::ubatch_io io;
  gpu::typed_buffer<float> x, xn, q, k, v, attn, gate, up, tmp, rows, logits;
  std::unique_ptr<engine::batch_attention> attention;
  engine::attention_plan plans[2];
  std::unique_ptr<engine::page_table> tables[2];
  std::int32_t parity = 0;
  std::uint64_t last_step = 0;
  std::vector<std::int32_t> scratch;
  std::vector<std::int32_t> sample_reqs;
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
  // The stream's worker thread is the compute; BLAS threads on top would
  // fight the other ranks' workers for the same cores.
  openblas_set_num_threads(1);
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
  for (std::int32_t i = 0; i < c.head_dim / 2; ++i)
    rope_inv_freq_.push_back(std::pow(c.rope_theta, -2.0f * static_cast<float>(i) / static_cast<float>(c.head_dim)));
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
  s->x = gpu::typed_buffer<float>(*device_, T * static_cast<std::size_t>(c.hidden));
  s->xn = gpu::typed_buffer<float>(*device_, T * static_cast<std::size_t>(c.hidden));
  s->tmp = gpu::typed_buffer<float>(*device_, T * static_cast<std::size_t>(c.hidden));
  s->q = gpu::typed_buffer<float>(*device_, T * static_cast<std::size_t>(c.q_dim()));
  s->attn = gpu::typed_buffer<float>(*device_, T * static_cast<std::size_t>(c.q_dim()));
  s->k = gpu::typed_buffer<float>(*device_, T * static_cast<std::size_t>(c.kv_dim()));
  s->v = gpu::typed_buffer<float>(*device_, T * static_cast<std::size_t>(c.kv_dim()));
  s->gate = gpu::typed_buffer<float>(*device_, T * static_cast<std::size_t>(c.intermediate));
  s->up = gpu::typed_buffer<float>(*device_, T * static_cast<std::size_t>(c.intermediate));
  s->rows = gpu::typed_buffer<float>(*device_, R * static_cast<std::size_t>(c.hidden));
  s->logits = gpu::typed_buffer<float>(*device_, R * static_cast<std::size_t>(c.vocab_size));
  engine::attention_config ac;
  ac.num_qo_heads = c.num_heads;
  ac.softmax_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  ac.dcp = engine::dcp_layout{world_, options_.rank, 1};
  ac.merge = engine::dcp_merge::all_gather;
  s->attention = std::make_unique<engine::batch_attention>(
      *device_, cache_, ac, options_.group != nullptr ? &options_.group->comm(options_.rank) : nullptr);
  for (auto& t : s->tables) t = std::make_unique<engine::page_table>(options_.num_pages);
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
    const std::int32_t first = step.block_indptr[static_cast<std::size_t>(j)];
    table.add_request(std::span<const std::int32_t>(step.block_indices).subspan(static_cast<std::size_t>(first),
                                                                                static_cast<std::size_t>(pages)));
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
  a.q = s.q.span().first(real * static_cast<std::size_t>(c.q_dim()));
  a.new_k = s.k.span().first(real * static_cast<std::size_t>(c.kv_dim()));
  a.new_v = s.v.span().first(real * static_cast<std::size_t>(c.kv_dim()));
  a.out = s.attn.span().first(real * static_cast<std::size_t>(c.q_dim()));
  return a;
}

void llama_model::enqueue_stage(std::int32_t index, const engine::ubatch_io& io, std::int32_t run_tokens,
                                gpu::stream_ref s) {
  slot* sl = slots_.at(static_cast<std::size_t>(io.slot)).get();
  const stage st = stages_.at(static_cast<std::size_t>(index));
  switch (st.what) {
    case op::embed_pre:
      s.enqueue([this, sl, run_tokens] {
        embed(*sl, run_tokens);
        pre_attention(*sl, 0, run_tokens);
      });
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
    case op::post: {
      const std::int32_t layer = st.layer;
      const bool last = layer + 1 == weights_->config.num_layers;
      s.enqueue([this, sl, layer, last, run_tokens] {
        post_attention(*sl, layer, run_tokens);
        if (last) {
          head_and_sample(*sl);
        } else {
          pre_attention(*sl, layer + 1, run_tokens);
        }
      });
      return;
    }
  }
}

void llama_model::recover() {
  if (options_.group != nullptr) options_.group->abort();
}

void llama_model::embed(slot& s, std::int32_t rows) const {
  const llama_config& c = weights_->config;
  float* x = s.x.data();
  for (std::int32_t r = 0; r < rows; ++r) {
    const std::int32_t t = std::clamp(s.io.token_ids[r], 0, c.vocab_size - 1);
    std::copy_n(weights_->embed.data() + static_cast<std::ptrdiff_t>(t) * c.hidden, c.hidden,
                x + static_cast<std::ptrdiff_t>(r) * c.hidden);
  }
}

void llama_model::pre_attention(slot& s, std::int32_t layer, std::int32_t rows) const {
  const llama_config& c = weights_->config;
  const llama_layer_weights& L = weights_->layers[static_cast<std::size_t>(layer)];
  rms_norm(s.x.data(), L.attn_norm, s.xn.data(), rows, c.hidden, c.rms_eps);
  matmul(s.xn.data(), L.wq, s.q.data(), rows, c.hidden, c.q_dim());
  matmul(s.xn.data(), L.wk, s.k.data(), rows, c.hidden, c.kv_dim());
  matmul(s.xn.data(), L.wv, s.v.data(), rows, c.hidden, c.kv_dim());
  // Rotary positions, rotate-half form (Llama's): pairs (i, i + d/2).
  const std::int32_t half = c.head_dim / 2;
  for (std::int32_t r = 0; r < rows; ++r) {
    const auto pos = static_cast<float>(s.io.positions[r]);
    for (std::int32_t i = 0; i < half; ++i) {
      const float a = pos * rope_inv_freq_[static_cast<std::size_t>(i)];
      const float cs = std::cos(a), sn = std::sin(a);
      auto apply = [&](float* vec, std::int32_t heads) {
        for (std::int32_t h = 0; h < heads; ++h) {
          float* hv = vec + static_cast<std::ptrdiff_t>(h) * c.head_dim;
          const float x0 = hv[i], x1 = hv[i + half];
          hv[i] = x0 * cs - x1 * sn;
          hv[i + half] = x1 * cs + x0 * sn;
        }
      };
      apply(s.q.data() + static_cast<std::ptrdiff_t>(r) * c.q_dim(), c.num_heads);
      apply(s.k.data() + static_cast<std::ptrdiff_t>(r) * c.kv_dim(), c.num_kv_heads);
    }
  }
}

void llama_model::post_attention(slot& s, std::int32_t layer, std::int32_t rows) const {
  const llama_config& c = weights_->config;
  const llama_layer_weights& L = weights_->layers[static_cast<std::size_t>(layer)];
  const auto n = static_cast<std::size_t>(rows) * static_cast<std::size_t>(c.hidden);
  matmul(s.attn.data(), L.wo, s.tmp.data(), rows, c.q_dim(), c.hidden);
  float* x = s.x.data();
  const float* t = s.tmp.data();
  for (std::size_t i = 0; i < n; ++i) x[i] += t[i];
  rms_norm(x, L.mlp_norm, s.xn.data(), rows, c.hidden, c.rms_eps);
  matmul(s.xn.data(), L.w_gate, s.gate.data(), rows, c.hidden, c.intermediate);
  matmul(s.xn.data(), L.w_up, s.up.data(), rows, c.hidden, c.intermediate);
  float* g = s.gate.data();
  const float* u = s.up.data();
  const auto m = static_cast<std::size_t>(rows) * static_cast<std::size_t>(c.intermediate);
  for (std::size_t i = 0; i < m; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];  // SwiGLU
  matmul(g, L.w_down, s.tmp.data(), rows, c.intermediate, c.hidden);
  for (std::size_t i = 0; i < n; ++i) x[i] += t[i];
}

void llama_model::head_and_sample(slot& s) const {
  const llama_config& c = weights_->config;
  const engine::ubatch_io& io = s.io;
  s.sample_reqs.clear();
  for (std::int32_t r = 0; r < io.counts[1]; ++r) {
    const std::int32_t row = io.sample_rows[r];
    if (row < 0) continue;
    rms_norm(s.x.data() + static_cast<std::ptrdiff_t>(row) * c.hidden, weights_->final_norm,
             s.rows.data() + static_cast<std::ptrdiff_t>(s.sample_reqs.size()) * c.hidden, 1, c.hidden, c.rms_eps);
    s.sample_reqs.push_back(r);
  }
  const auto n = static_cast<std::int32_t>(s.sample_reqs.size());
  matmul(s.rows.data(), weights_->lm_head, s.logits.data(), n, c.hidden, c.vocab_size);
  for (std::int32_t i = 0; i < n; ++i) {
    const std::int32_t r = s.sample_reqs[static_cast<std::size_t>(i)];
    const std::span<const float> logits(s.logits.data() + static_cast<std::ptrdiff_t>(i) * c.vocab_size,
                                        static_cast<std::size_t>(c.vocab_size));
    const std::int32_t token = sample_token(logits, io.temperature[r], io.top_p[r], io.seed[r], io.sample_index[r], s.scratch);
    io.sampled[io.req_slots[r]] = token;
    if (io.logits != nullptr)
      std::copy(logits.begin(), logits.end(), io.logits + static_cast<std::ptrdiff_t>(io.req_slots[r]) * c.vocab_size);
  }
}

}  // namespace cobatch::model
