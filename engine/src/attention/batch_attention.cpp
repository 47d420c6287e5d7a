#include "cobatch/engine/attention/batch_attention.hpp"

#include "kv_pool_args.hpp"
#include "message.hpp"

#include <cobatch/gpu/copy.hpp>
#include <cobatch/gpu/kernels/attention_kernels.hpp>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

namespace cobatch::engine {

namespace kn = gpu::kernels;

struct batch_attention::state {
  gpu::device_buffer workspace;
  // Workspaces outgrown while runs may still read them: freed with the
  // wrapper (growth is geometric, so they hold less than the current one).
  std::vector<gpu::device_buffer> retired;
  std::uint64_t uploaded_id = 0;
  std::uint64_t phase_plan_id = 0;
  std::int32_t next_phase = 0;
  gpu::event compute_done;
  gpu::event comm_done;
};

namespace {

std::string where_geometry(const kv_cache_config& a) {
  return detail::cat("layers=", a.num_layers, " pages=", a.num_pages, " page_size=", a.page_size,
                     " kv_heads=", a.num_kv_heads, " head_dim=", a.head_dim, " storage=", gpu::name_of(a.storage));
}

bool same_geometry(const kv_cache_config& a, const kv_cache_config& b) noexcept {
  return a.num_layers == b.num_layers && a.num_pages == b.num_pages && a.page_size == b.page_size &&
         a.num_kv_heads == b.num_kv_heads && a.head_dim == b.head_dim && a.storage == b.storage;
}

template <class T>
T* at(const gpu::device_buffer& ws, std::size_t offset) noexcept {
  return reinterpret_cast<T*>(static_cast<std::byte*>(ws.data()) + offset);
}

void check_tensor(const gpu::any_device_span& t, const char* name, gpu::data_type type, std::size_t elements,
                  gpu::backend_kind backend) {
  if (t.type() != type) {
    throw_engine_error(errc::invalid_argument, detail::cat("batch_attention: ", name, " holds ", gpu::name_of(t.type()),
                                                           " elements; the cache stores ", gpu::name_of(type)));
  }
  if (t.size() != elements) {
    throw_engine_error(errc::length_mismatch, detail::cat("batch_attention: ", name, " holds ", t.size(),
                                                          " elements; the plan needs ", elements));
  }
  if (t.backend() != backend || (elements > 0 && t.data() == nullptr)) {
    throw_engine_error(errc::invalid_argument,
                       detail::cat("batch_attention: ", name, " is not memory of the cache's device"));
  }
}

}  // namespace

batch_attention::batch_attention(gpu::device& device, paged_kv_cache& cache, const attention_config& config,
                                 const gpu::communicator* dcp_comm)
    : device_(&device), cache_(&cache), config_(config), comm_(dcp_comm), state_(std::make_unique<state>()) {
  validate_attention_config(cache.config(), config);
  if (cache.backend() != device.backend()) {
    throw_engine_error(errc::invalid_argument, "batch_attention: the cache lives on another backend than the device");
  }
  if (config.dcp.world > 1 && (dcp_comm == nullptr || !*dcp_comm)) {
    throw_engine_error(errc::invalid_argument, detail::cat("batch_attention: dcp world=", config.dcp.world,
                                                           " needs a communicator; none was given"));
  }
  if (dcp_comm != nullptr && *dcp_comm) {
    if (dcp_comm->size() != config.dcp.world || dcp_comm->rank() != config.dcp.rank) {
      throw_engine_error(errc::invalid_argument,
                         detail::cat("batch_attention: the communicator is rank ", dcp_comm->rank(), " of ",
                                     dcp_comm->size(), "; the config says dcp rank ", config.dcp.rank, " of world ",
                                     config.dcp.world));
    }
  } else {
    comm_ = nullptr;
  }
  state_->compute_done = device.make_event();
  state_->comm_done = device.make_event();
}

batch_attention::~batch_attention() = default;

namespace {

// A successful plan's share of the statistics.
void count_plan(attention_stats& stats, std::chrono::steady_clock::time_point start, const attention_plan& plan) {
  const auto ns = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count());
  ++stats.plans;
  stats.plan_ns_total += ns;
  stats.plan_ns_max = std::max(stats.plan_ns_max, ns);
  stats.planned_requests += static_cast<std::uint64_t>(plan.num_reqs());
  stats.planned_kv_tokens += static_cast<std::uint64_t>(plan.local_kv_tokens());
}

}  // namespace

void batch_attention::plan(const attention_batch& batch, attention_plan& out) {
  const auto start = std::chrono::steady_clock::now();
  try {
    plan_attention(cache_->config(), config_, batch, out);
  } catch (...) {
    ++stats_.plan_failures;
    throw;
  }
  count_plan(stats_, start, out);
}

void batch_attention::plan(const attention_batch& batch, attention_plan& out, std::error_code& ec) noexcept {
  const auto start = std::chrono::steady_clock::now();
  plan_attention(cache_->config(), config_, batch, out, ec);
  if (ec) {
    ++stats_.plan_failures;
    return;
  }
  count_plan(stats_, start, out);
}

void batch_attention::reserve(const attention_plan& plan, gpu::stream_ref /*s*/) {
  const std::size_t need = std::max<std::size_t>(plan.workspace().total, 256);
  auto& ws = state_->workspace;
  if (ws && ws.size() >= need) return;
  const std::size_t grown = ws ? std::max(need, ws.size() + ws.size() / 2) : need;
  gpu::device_buffer fresh = gpu::allocate(*device_, grown);
  if (ws) state_->retired.push_back(std::move(ws));
  ws = std::move(fresh);
  state_->uploaded_id = 0;  // the tables live in the workspace
  stats_.workspace_bytes = ws.size();
  ++stats_.workspace_allocations;
}

void batch_attention::check(const attention_plan& plan, const attention_io& io) const {
  if (!plan.planned()) {
    throw_engine_error(errc::invalid_argument, "batch_attention: the plan was never planned, or its last plan failed");
  }
  const kv_cache_config& cc = cache_->config();
  if (!same_geometry(plan.cache(), cc)) {
    throw_engine_error(errc::invalid_argument, detail::cat("batch_attention: the plan was made for a cache of ",
                                                           where_geometry(plan.cache()), "; this wrapper's has ",
                                                           where_geometry(cc)));
  }
  const attention_config& pc = plan.config();
  if (pc.dcp.world != config_.dcp.world || pc.dcp.rank != config_.dcp.rank ||
      pc.dcp.interleave != config_.dcp.interleave) {
    throw_engine_error(errc::invalid_argument,
                       detail::cat("batch_attention: the plan was made for dcp rank ", pc.dcp.rank, " of world ",
                                   pc.dcp.world, " (interleave ", pc.dcp.interleave, "); this wrapper is rank ",
                                   config_.dcp.rank, " of world ", config_.dcp.world, " (interleave ",
                                   config_.dcp.interleave, ")"));
  }
  if (pc.num_qo_heads != config_.num_qo_heads || pc.merge != config_.merge ||
      pc.softmax_scale != config_.softmax_scale) {
    throw_engine_error(errc::invalid_argument,
                       detail::cat("batch_attention: the plan was made for num_qo_heads=", pc.num_qo_heads, " merge=",
                                   name_of(pc.merge), " softmax_scale=", static_cast<double>(pc.softmax_scale),
                                   "; this wrapper has num_qo_heads=", config_.num_qo_heads, " merge=",
                                   name_of(config_.merge), " softmax_scale=",
                                   static_cast<double>(config_.softmax_scale)));
  }
  if (io.layer < 0 || io.layer >= cc.num_layers) {
    throw_engine_error(errc::invalid_argument, detail::cat("batch_attention: layer=", io.layer, " is outside [0, ",
                                                           cc.num_layers, ")"));
  }
  const auto t = static_cast<std::size_t>(plan.num_tokens());
  const auto d = static_cast<std::size_t>(cc.head_dim);
  const auto backend = cache_->backend();
  check_tensor(io.q, "q", cc.storage, t * static_cast<std::size_t>(config_.num_qo_heads) * d, backend);
  if (io.new_k.empty() != io.new_v.empty()) {
    throw_engine_error(errc::invalid_argument, detail::cat("batch_attention: new_k holds ", io.new_k.size(),
                                                           " elements and new_v ", io.new_v.size(),
                                                           "; give both or neither"));
  }
  if (!io.new_k.empty()) {
    const std::size_t kv = t * static_cast<std::size_t>(cc.num_kv_heads) * d;
    check_tensor(io.new_k, "new_k", cc.storage, kv, backend);
    check_tensor(io.new_v, "new_v", cc.storage, kv, backend);
  }
  check_tensor(io.out, "out", cc.storage, plan.output_elements(), backend);
  if (!io.lse.empty()) {
    check_tensor(gpu::any_device_span(io.lse.values()), "lse", gpu::data_type::f32, plan.lse_elements(), backend);
  }
}

std::int32_t batch_attention::phase_count(const attention_plan& plan) const noexcept {
  if (plan.config().dcp.world <= 1) return 1;
  return plan.config().merge == dcp_merge::all_gather ? 3 : 5;
}

gpu::stream_role batch_attention::phase_role(const attention_plan& plan, std::int32_t phase) const noexcept {
  (void)plan;
  return phase % 2 == 1 ? gpu::stream_role::communication : gpu::stream_role::compute;
}

void batch_attention::enqueue_phase(const attention_plan& plan, const attention_io& io, std::int32_t phase,
                                    gpu::stream_ref s) {
  const std::int32_t count = phase_count(plan);
  if (phase < 0 || phase >= count) {
    throw_engine_error(errc::invalid_argument,
                       detail::cat("batch_attention::enqueue_phase: phase=", phase, " is outside [0, ", count, ")"));
  }
  if (phase != 0 && (phase != state_->next_phase || plan.id() != state_->phase_plan_id)) {
    throw_engine_error(errc::invalid_argument,
                       detail::cat("batch_attention::enqueue_phase: phase ", phase, " of plan ", plan.id(),
                                   " enqueued while phase ", state_->next_phase, " of plan ", state_->phase_plan_id,
                                   " is next"));
  }
  const kv_cache_config& cc = cache_->config();
  const gpu::backend_kind backend = cache_->backend();
  const std::int32_t t = plan.num_tokens();
  const std::int32_t h = config_.num_qo_heads;
  const std::int32_t d = cc.head_dim;
  const std::int32_t world = config_.dcp.world;
  const float lse_scale = io.lse.empty() ? 1.0f : lse_scale_from_natural(io.lse.base());
  float* lse_out = io.lse.empty() ? nullptr : io.lse.values().data();
  const auto& lay = plan.workspace();

  if (phase == 0) {
    check(plan, io);
    reserve(plan, s);
    const auto& ws = state_->workspace;
    upload_tables(plan, s);
    void* layer_pages = cache_->layer(io.layer).data();
    if (!io.new_k.empty() && plan.appended_tokens() > 0) {
      enqueue_append_kernel(plan, layer_pages, io.new_k.data(), io.new_v.data(), s);
    }
    const bool direct = world <= 1;
    kn::paged_attention_args a;
    a.storage = cc.storage;
    a.out_type = direct ? cc.storage : gpu::data_type::f32;
    a.q = io.q.data();
    a.kv_pages = layer_pages;
    a.num_pages = cc.num_pages;
    a.page_size = cc.page_size;
    a.num_qo_heads = h;
    a.num_kv_heads = cc.num_kv_heads;
    a.head_dim = d;
    a.sm_scale = config_.softmax_scale;
    a.dcp_world = world;
    a.dcp_rank = config_.dcp.rank;
    a.dcp_interleave = config_.dcp.interleave;
    a.kv_indices = at<std::int32_t>(ws, lay.indices);
    a.requests = at<kn::attention_request>(ws, lay.requests);
    a.work = plan.work_is_identity() ? nullptr : at<kn::attention_work_item>(ws, lay.work);
    a.num_work = plan.num_work_items();
    a.num_tokens = t;
    a.max_q_len = plan.shape().max_query_len;
    a.out = direct ? io.out.data() : at<void>(ws, lay.local_out);
    a.out_lse = direct ? lse_out : at<float>(ws, lay.local_lse);
    a.lse_out_scale = direct ? lse_scale : 1.0f;
    a.partial_out = plan.partial_rows() > 0 ? at<float>(ws, lay.partial_out) : nullptr;
    a.partial_lse = plan.partial_rows() > 0 ? at<float>(ws, lay.partial_lse) : nullptr;
    if (a.num_work > 0) kn::enqueue_paged_attention(backend, a, s);
    if (!plan.chunk_items().empty()) {
      kn::chunk_merge_args m;
      m.num_heads = h;
      m.head_dim = d;
      m.items = at<kn::chunk_merge_item>(ws, lay.chunk_items);
      m.num_items = static_cast<std::int32_t>(plan.chunk_items().size());
      m.max_q_len = plan.shape().max_query_len;
      m.partial_out = a.partial_out;
      m.partial_lse = a.partial_lse;
      m.out = a.out;
      m.out_type = a.out_type;
      m.out_lse = a.out_lse;
      m.lse_out_scale = a.lse_out_scale;
      kn::enqueue_chunk_merge(backend, m, s);
    }
    stats_.query_tokens += static_cast<std::uint64_t>(t);
  } else {
    const auto& ws = state_->workspace;
    const auto th = static_cast<std::size_t>(t) * static_cast<std::size_t>(h);
    const bool all_gather = config_.merge == dcp_merge::all_gather;
    if (all_gather && phase == 1) {
      comm_->all_gather(at<float>(ws, lay.local_out), at<float>(ws, lay.gather_out), th * static_cast<std::size_t>(d),
                        gpu::data_type::f32, s);
      comm_->all_gather(at<float>(ws, lay.local_lse), at<float>(ws, lay.gather_lse), th, gpu::data_type::f32, s);
    } else if (all_gather && phase == 2) {
      kn::lse_merge_args m;
      m.num_shards = world;
      m.rows = static_cast<std::int64_t>(th);
      m.head_dim = d;
      m.shard_out = at<float>(ws, lay.gather_out);
      m.shard_out_stride = static_cast<std::int64_t>(th) * d;
      m.shard_lse = at<float>(ws, lay.gather_lse);
      m.shard_lse_stride = static_cast<std::int64_t>(th);
      m.out = io.out.data();
      m.out_type = cc.storage;
      m.out_lse = lse_out;
      m.lse_out_scale = lse_scale;
      kn::enqueue_lse_merge(backend, m, s);
    } else if (phase == 1) {
      comm_->all_gather(at<float>(ws, lay.local_lse), at<float>(ws, lay.gather_lse), th, gpu::data_type::f32, s);
    } else if (phase == 2) {
      kn::lse_correct_args c;
      c.world = world;
      c.rank = config_.dcp.rank;
      c.num_tokens = t;
      c.num_heads = h;
      c.head_dim = d;
      c.all_lse = at<float>(ws, lay.gather_lse);
      c.local_out = at<float>(ws, lay.local_out);
      c.scatter_out = at<float>(ws, lay.scatter_out);
      c.out_lse = lse_out;
      c.lse_out_scale = lse_scale;
      kn::enqueue_lse_correct(backend, c, s);
    } else if (phase == 3) {
      void* dst = cc.storage == gpu::data_type::f32 ? io.out.data() : at<void>(ws, lay.reduced_out);
      comm_->reduce_scatter(at<float>(ws, lay.scatter_out), dst, plan.output_elements(), gpu::data_type::f32,
                            gpu::reduce_op::sum, s);
    } else if (phase == 4 && cc.storage != gpu::data_type::f32) {
      kn::convert_args c;
      c.src = at<float>(ws, lay.reduced_out);
      c.dst = io.out.data();
      c.dst_type = cc.storage;
      c.count = static_cast<std::int64_t>(plan.output_elements());
      kn::enqueue_convert(backend, c, s);
    }
  }
  state_->phase_plan_id = plan.id();
  state_->next_phase = phase + 1 == count ? 0 : phase + 1;
  if (phase + 1 == count) {
    ++stats_.runs;
    stats_.dcp_bytes += static_cast<std::uint64_t>(plan.dcp_bytes_per_run());
  }
}

void batch_attention::enqueue_append(const attention_plan& plan, std::int32_t layer, gpu::any_device_span new_k,
                                     gpu::any_device_span new_v, gpu::stream_ref s) {
  attention_io io;
  io.layer = layer;
  // check() wants q and out; an append has neither, so check the parts it has.
  if (!plan.planned()) {
    throw_engine_error(errc::invalid_argument, "batch_attention::enqueue_append: the plan was never planned");
  }
  const kv_cache_config& cc = cache_->config();
  if (!same_geometry(plan.cache(), cc) || plan.config().dcp.rank != config_.dcp.rank ||
      plan.config().dcp.world != config_.dcp.world || plan.config().dcp.interleave != config_.dcp.interleave) {
    throw_engine_error(errc::invalid_argument,
                       "batch_attention::enqueue_append: the plan was made for another cache or dcp layout");
  }
  if (layer < 0 || layer >= cc.num_layers) {
    throw_engine_error(errc::invalid_argument, detail::cat("batch_attention::enqueue_append: layer=", layer,
                                                           " is outside [0, ", cc.num_layers, ")"));
  }
  const std::size_t kv = static_cast<std::size_t>(plan.num_tokens()) * static_cast<std::size_t>(cc.num_kv_heads) *
                         static_cast<std::size_t>(cc.head_dim);
  check_tensor(new_k, "new_k", cc.storage, kv, cache_->backend());
  check_tensor(new_v, "new_v", cc.storage, kv, cache_->backend());
  reserve(plan, s);
  upload_tables(plan, s);
  if (plan.appended_tokens() > 0) enqueue_append_kernel(plan, cache_->layer(layer).data(), new_k.data(), new_v.data(), s);
}

void batch_attention::upload_tables(const attention_plan& plan, gpu::stream_ref s) {
  if (state_->uploaded_id == plan.id()) return;
  const auto& ws = state_->workspace;
  const auto& lay = plan.workspace();
  auto upload = [&](std::size_t offset, const void* src, std::size_t bytes) {
    if (bytes == 0) return;
    gpu::detail::copy_bytes_async(cache_->backend(), gpu::copy_direction::host_to_device, at<std::byte>(ws, offset), src,
                                  bytes, s);
  };
  upload(lay.requests, plan.requests().data(), plan.requests().size_bytes());
  upload(lay.work, plan.work().data(), plan.work().size_bytes());
  upload(lay.chunk_items, plan.chunk_items().data(), plan.chunk_items().size_bytes());
  upload(lay.indices, plan.indices().data(), plan.indices().size_bytes());
  state_->uploaded_id = plan.id();
  ++stats_.uploads;
}

void batch_attention::enqueue_append_kernel(const attention_plan& plan, void* layer_pages, const void* k,
                                            const void* v, gpu::stream_ref s) {
  const kv_cache_config& cc = cache_->config();
  const auto& ws = state_->workspace;
  const auto& lay = plan.workspace();
  kn::kv_append_args a;
  detail::set_pool(a, cc, layer_pages);
  a.k = k;
  a.v = v;
  a.requests = at<kn::attention_request>(ws, lay.requests);
  a.num_reqs = plan.num_reqs();
  a.max_q_len = plan.shape().max_query_len;
  a.kv_indices = at<std::int32_t>(ws, lay.indices);
  a.dcp_world = config_.dcp.world;
  a.dcp_rank = config_.dcp.rank;
  a.dcp_interleave = config_.dcp.interleave;
  kn::enqueue_kv_append(cache_->backend(), a, s);
  stats_.appended_tokens += static_cast<std::uint64_t>(plan.appended_tokens());
}

void batch_attention::enqueue_run(const attention_plan& plan, const attention_io& io, gpu::stream_ref compute,
                                  gpu::stream_ref comm) {
  check(plan, io);
  const std::int32_t count = phase_count(plan);
  gpu::stream_ref current = compute;
  for (std::int32_t k = 0; k < count; ++k) {
    const gpu::stream_ref target = phase_role(plan, k) == gpu::stream_role::compute ? compute : comm;
    if (!(target == current)) {
      // A device-side join: the target stream waits for the work so far.
      const gpu::event& done = current == compute ? state_->compute_done : state_->comm_done;
      current.record(done);
      target.wait(done);
      current = target;
    }
    enqueue_phase(plan, io, k, target);
  }
  if (!(current == compute)) {
    current.record(state_->comm_done);
    compute.wait(state_->comm_done);
  }
}

void batch_attention::abort_peers() noexcept {
  if (comm_ != nullptr) comm_->abort();
}

void batch_attention::reset_stats() noexcept {
  const auto bytes = stats_.workspace_bytes;
  stats_ = {};
  stats_.workspace_bytes = bytes;
}

}  // namespace cobatch::engine
