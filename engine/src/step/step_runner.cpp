#include "cobatch/engine/step/step_runner.hpp"

#include "cobatch/coro/use_task.hpp"
#include "cobatch/engine/ubatch/ubatch_error.hpp"
#include "cobatch/gpu/copy.hpp"
#include "cobatch/gpu/kernels/resolve_refs.hpp"

#include "message.hpp"

#include <algorithm>
#include <cstring>

namespace cobatch::engine {

// Where each input of a micro-batch slot lies in its block, in bytes. The
// staging block of a step (host) and the persistent buffers (the device's)
// have this one layout, so that a step's inputs go in with one copy. Per-
// request arrays first and the page ids last: a step copies its blocks up to
// the last byte it wrote, which for the last micro-batch ends at its pages.
struct step_runner::input_layout {
  std::size_t counts = 0, dcp = 0, query_start_loc = 0, seq_lens = 0, block_indptr = 0, req_slots = 0, sample_rows = 0,
              sample_index = 0, temperature = 0, top_p = 0, seed = 0, token_src = 0, positions = 0, block_indices = 0;
  std::size_t slot_bytes = 0;

  input_layout(std::size_t tokens, std::size_t reqs, std::size_t pages) {
    std::size_t at = 0;
    // 64-byte fields: whole cache lines on the host, aligned loads on a GPU.
    auto field = [&](std::size_t bytes) {
      const std::size_t here = at;
      at = (at + bytes + 63) / 64 * 64;
      return here;
    };
    constexpr std::size_t i32 = sizeof(std::int32_t);
    counts = field(2 * i32);
    dcp = field(2 * i32);
    query_start_loc = field((reqs + 1) * i32);
    seq_lens = field(reqs * i32);
    block_indptr = field((reqs + 1) * i32);
    req_slots = field(reqs * i32);
    sample_rows = field(reqs * i32);
    sample_index = field(reqs * i32);
    temperature = field(reqs * sizeof(float));
    top_p = field(reqs * sizeof(float));
    seed = field(reqs * sizeof(std::uint64_t));
    token_src = field(tokens * i32);
    positions = field(tokens * i32);
    block_indices = field(pages * i32);
    slot_bytes = (at + 255) / 256 * 256;
  }
  template <class T>
  static T* at(std::byte* block, std::size_t offset) noexcept {
    return reinterpret_cast<T*>(block + offset);
  }
};

struct step_runner::ring_entry {
  bool in_use = false;
  std::uint64_t step = 0;
  std::int32_t num_reqs = 0;
  std::int32_t num_ubatches = 0;
  std::vector<std::int32_t> run_tokens;  // per micro-batch
  // The step's inputs, laid out as the device's blocks (input_layout), and
  // its outputs as they come back: host memory the device copies from and to.
  gpu::pinned_buffer staging;
  gpu::pinned_buffer outputs;
  std::span<std::int32_t> sampled;
  std::span<float> logits;
  // Written on the stream's thread before the event's record; read after
  // awaiting it.
  std::chrono::steady_clock::time_point begin{}, end{};
  std::vector<std::atomic<std::int32_t>> progress;  // collectives done, per micro-batch
  gpu::event done;
};

step_runner::step_runner(asio::any_io_executor executor, gpu::device& device, step_model& model, runner_options o)
    : executor_(std::move(executor)), device_(&device), model_(&model), options_(o) {
  constexpr std::string_view api = "step_runner";
  detail::require_at_least(api, "max_tokens", o.max_tokens, 1);
  detail::require_at_least(api, "max_reqs", o.max_reqs, 1);
  detail::require_at_least(api, "max_pages", o.max_pages, 1);
  detail::require_at_least(api, "max_ubatches", o.max_ubatches, 1);
  detail::require_at_least(api, "ring", o.ring, 1);
  if (o.dcp_world < 1 || o.dcp_rank < 0 || o.dcp_rank >= o.dcp_world)
    throw_engine_error(errc::invalid_argument,
                       detail::cat("step_runner: dcp_rank ", o.dcp_rank, " is not a rank of dcp_world ", o.dcp_world));
  const model_info info = model.info();
  detail::require_at_least(api, "model vocab_size", info.vocab_size, 1);
  const std::span<const stage_kind> stages = model.stages();
  stages_.assign(stages.begin(), stages.end());
  if (stages_.empty()) detail::raise_bad_option(api, "model stages()", 0, "is empty");
  for (std::size_t i = 0; i < stages_.size(); ++i) {
    if (stages_[i] != stage_kind::graph && stages_[i] != stage_kind::eager && stages_[i] != stage_kind::collective)
      throw_engine_error(errc::unknown_mode, detail::cat("step_runner: model stage ", i, " has an unknown stage_kind"));
    if (stages_[i] == stage_kind::collective) collective_stage_.push_back(static_cast<std::int32_t>(i));
  }
  inputs_ = persistent_inputs({o.check});

  const auto cap_t = static_cast<std::size_t>(o.max_tokens);
  const auto cap_r = static_cast<std::size_t>(o.max_reqs);
  const auto cap_p = static_cast<std::size_t>(o.max_pages);
  const auto vocab = static_cast<std::size_t>(info.vocab_size);
  const auto n_slots = static_cast<std::size_t>(o.max_ubatches);
  layout_ = std::make_unique<input_layout>(cap_t, cap_r, cap_p);
  const input_layout& L = *layout_;
  // The persistent buffers: device memory of the runner's device, allocated
  // once (graphs replay over these addresses).
  inputs_dev_ = gpu::typed_buffer<std::byte>(device, n_slots * L.slot_bytes);
  token_ids_dev_ = gpu::typed_buffer<std::int32_t>(device, n_slots * cap_t);
  sampled_dev_ = gpu::typed_buffer<std::int32_t>(device, cap_r);
  if (o.keep_logits) logits_dev_ = gpu::typed_buffer<float>(device, cap_r * vocab);
  for (std::size_t u = 0; u < n_slots; ++u) {
    std::byte* base = inputs_dev_.data() + u * L.slot_bytes;
    const std::string p = detail::cat("ubatch ", u, ".");
    auto add = [&](const char* name, std::size_t offset, std::size_t bytes) {
      inputs_.add(p + name, std::span<std::byte>(base + offset, bytes));
    };
    constexpr std::size_t i32 = sizeof(std::int32_t);
    add("counts", L.counts, 2 * i32);
    add("dcp", L.dcp, 2 * i32);
    add("query_start_loc", L.query_start_loc, (cap_r + 1) * i32);
    add("seq_lens", L.seq_lens, cap_r * i32);
    add("block_indptr", L.block_indptr, (cap_r + 1) * i32);
    add("req_slots", L.req_slots, cap_r * i32);
    add("sample_rows", L.sample_rows, cap_r * i32);
    add("sample_index", L.sample_index, cap_r * i32);
    add("temperature", L.temperature, cap_r * sizeof(float));
    add("top_p", L.top_p, cap_r * sizeof(float));
    add("seed", L.seed, cap_r * sizeof(std::uint64_t));
    add("token_src", L.token_src, cap_t * i32);
    add("positions", L.positions, cap_t * i32);
    add("block_indices", L.block_indices, cap_p * i32);
    inputs_.add(p + "token_ids",
                std::as_writable_bytes(std::span<std::int32_t>(token_ids_dev_.data() + u * cap_t, cap_t)));
    caches_.emplace_back(o.graphs);
    ubatch_io io{static_cast<std::int32_t>(u),
                 o.max_tokens,
                 o.max_reqs,
                 o.max_pages,
                 info.vocab_size,
                 token_ids_dev_.data() + u * cap_t,
                 input_layout::at<std::int32_t>(base, L.positions),
                 input_layout::at<std::int32_t>(base, L.query_start_loc),
                 input_layout::at<std::int32_t>(base, L.seq_lens),
                 input_layout::at<std::int32_t>(base, L.block_indptr),
                 input_layout::at<std::int32_t>(base, L.block_indices),
                 input_layout::at<std::int32_t>(base, L.req_slots),
                 input_layout::at<std::int32_t>(base, L.sample_rows),
                 input_layout::at<std::int32_t>(base, L.sample_index),
                 input_layout::at<float>(base, L.temperature),
                 input_layout::at<float>(base, L.top_p),
                 input_layout::at<std::uint64_t>(base, L.seed),
                 input_layout::at<std::int32_t>(base, L.counts),
                 input_layout::at<std::int32_t>(base, L.dcp),
                 sampled_dev_.data(),
                 o.keep_logits ? logits_dev_.data() : nullptr};
    ios_.push_back(io);
  }
  for (const ubatch_io& io : ios_) model.bind(io);
  const std::size_t sampled_bytes = (cap_r * sizeof(std::int32_t) + 63) / 64 * 64;
  const std::size_t logits_count = o.keep_logits ? cap_r * vocab : 0;
  for (std::int32_t r = 0; r < o.ring; ++r) {
    auto e = std::make_unique<ring_entry>();
    e->staging = gpu::allocate_pinned(device, n_slots * L.slot_bytes);
    e->outputs = gpu::allocate_pinned(device, sampled_bytes + logits_count * sizeof(float));
    e->sampled = std::span<std::int32_t>(reinterpret_cast<std::int32_t*>(e->outputs.data()), cap_r);
    if (o.keep_logits) e->logits = std::span<float>(reinterpret_cast<float*>(e->outputs.data() + sampled_bytes), logits_count);
    e->progress = std::vector<std::atomic<std::int32_t>>(n_slots);
    e->run_tokens.assign(n_slots, 0);
    e->done = device.make_event();
    ring_.push_back(std::move(e));
  }
  make_streams();
  // Defined contents before the first step (CUDA's device memory starts
  // uninitialized), ordered before it on the stream that runs it.
  gpu::stream_ref s = scheduler_->compute_stream(0);
  gpu::fill_async(inputs_dev_.span(), std::byte{0}, s);
  gpu::fill_async(token_ids_dev_.span(), std::int32_t{0}, s);
  gpu::fill_async(sampled_dev_.span(), std::int32_t{0}, s);
  if (logits_dev_) gpu::fill_async(logits_dev_.span(), 0.0f, s);
}

step_runner::~step_runner() = default;

void step_runner::make_streams() {
  scheduler_.reset();
  pool_ = std::make_unique<gpu::stream_pool>(*device_, gpu::stream_pool_options{.compute_streams = 1, .communication_streams = 1});
  scheduler_ = std::make_unique<ubatch_scheduler>(*device_, *pool_);
  scheduler_->set_timeline(trace_);
}

void step_runner::set_timeline(timeline* trace) noexcept {
  trace_ = trace;
  scheduler_->set_timeline(trace);
}

const graph_cache<segment_graphs>& step_runner::graphs(std::int32_t slot) const {
  if (slot < 0 || slot >= static_cast<std::int32_t>(caches_.size()))
    throw_engine_error(errc::invalid_argument, detail::cat("step_runner::graphs: slot ", slot, " is out of range"));
  return caches_[static_cast<std::size_t>(slot)];
}

// Writes micro-batch u's inputs into its block of the step's staging, as the
// device will see them: padding rows [real, run) hold token 0 at position 0;
// token references stay references (the device resolves them). Returns the
// bytes of the block written, from its start.
std::size_t step_runner::stage(const step_plan& plan, std::int32_t u, ring_entry& e) const {
  const ubatch b = plan.ubatches[u];
  const dispatch_route& route = plan.routes[static_cast<std::size_t>(u)];
  const std::int32_t real = b.real_tokens();
  const std::int32_t run = route.mode == dispatch_mode::eager ? real : static_cast<std::int32_t>(route.run_tokens());
  if (run > options_.max_tokens)
    throw_engine_error(errc::no_capacity, detail::cat("step_runner: micro-batch ", u, " of step ", plan.step, " runs ", run,
                                                      " tokens; the buffers hold ", options_.max_tokens));
  if (run < real)
    throw_engine_error(errc::invalid_argument, detail::cat("step_runner: micro-batch ", u, " of step ", plan.step, " runs ", run,
                                                           " tokens for its ", real, " real ones"));
  if (plan.block_begin.size() != plan.requests.size() || plan.block_end.size() != plan.requests.size())
    throw_engine_error(errc::length_mismatch,
                       detail::cat("step_runner: step ", plan.step, " has ", plan.num_reqs(), " requests, ",
                                   plan.block_begin.size(), " block_begin and ", plan.block_end.size(), " block_end"));
  // The plan names each request's row of its persistent block table; the
  // micro-batch's CSR packs those rows into the slot's block (the one copy-in
  // carries them with the rest).
  const auto table_size = static_cast<std::int32_t>(plan.block_table.size());
  std::int64_t pages = 0;
  for (std::int32_t j = b.req_begin; j < b.req_end; ++j) {
    const std::int32_t rb = plan.block_begin[static_cast<std::size_t>(j)];
    const std::int32_t re = plan.block_end[static_cast<std::size_t>(j)];
    if (rb < 0 || rb > re || re > table_size)
      throw_engine_error(errc::invalid_argument,
                         detail::cat("step_runner: step ", plan.step, " request ", j, "'s row [", rb, ", ", re,
                                     ") is not in its block table of ", table_size, " entries"));
    pages += re - rb;
  }
  if (pages > options_.max_pages)
    throw_engine_error(errc::no_capacity, detail::cat("step_runner: micro-batch ", u, " of step ", plan.step, " lists ", pages,
                                                      " pages; the buffers hold ", options_.max_pages));
  const input_layout& L = *layout_;
  std::byte* block = e.staging.data() + static_cast<std::size_t>(u) * L.slot_bytes;
  const auto n_reqs = static_cast<std::size_t>(b.num_reqs());

  auto* tokens = input_layout::at<std::int32_t>(block, L.token_src);
  const std::int32_t* src = plan.token_ids.data() + b.token_begin;
  for (std::int32_t i = 0; i < real; ++i) {
    // A reference past the sampled buffer would read another step's token
    // (the device kernel reads 0 there): refuse it here, by name.
    if (is_token_ref(src[i]) && token_ref_slot(src[i]) >= options_.max_reqs)
      throw_engine_error(errc::invalid_argument,
                         detail::cat("step_runner: step ", plan.step, " token ", b.token_begin + i,
                                     " refers to output slot ", token_ref_slot(src[i]), "; the buffers hold ",
                                     options_.max_reqs));
    tokens[i] = src[i];
  }
  std::fill(tokens + real, tokens + run, 0);
  auto* positions = input_layout::at<std::int32_t>(block, L.positions);
  std::copy_n(plan.positions.data() + b.token_begin, real, positions);
  std::fill(positions + real, positions + run, 0);
  std::copy(b.query_start_loc.begin(), b.query_start_loc.end(), input_layout::at<std::int32_t>(block, L.query_start_loc));
  std::copy(b.seq_lens.begin(), b.seq_lens.end(), input_layout::at<std::int32_t>(block, L.seq_lens));
  auto* indptr = input_layout::at<std::int32_t>(block, L.block_indptr);
  auto* indices = input_layout::at<std::int32_t>(block, L.block_indices);
  std::int32_t at = 0;
  *indptr++ = 0;
  for (std::int32_t j = b.req_begin; j < b.req_end; ++j) {
    const auto row = plan.block_table.subspan(static_cast<std::size_t>(plan.block_begin[static_cast<std::size_t>(j)]),
                                              static_cast<std::size_t>(plan.block_end[static_cast<std::size_t>(j)] -
                                                                       plan.block_begin[static_cast<std::size_t>(j)]));
    std::copy(row.begin(), row.end(), indices + at);
    at += static_cast<std::int32_t>(row.size());
    *indptr++ = at;
  }
  auto* req_slots = input_layout::at<std::int32_t>(block, L.req_slots);
  auto* sample_rows = input_layout::at<std::int32_t>(block, L.sample_rows);
  auto* sample_index = input_layout::at<std::int32_t>(block, L.sample_index);
  auto* temperature = input_layout::at<float>(block, L.temperature);
  auto* top_p = input_layout::at<float>(block, L.top_p);
  auto* seed = input_layout::at<std::uint64_t>(block, L.seed);
  for (std::size_t k = 0; k < n_reqs; ++k) {
    const std::int32_t j = b.req_begin + static_cast<std::int32_t>(k);
    const scheduled_request& r = plan.requests[static_cast<std::size_t>(j)];
    const std::int32_t last = r.token_begin + r.num_tokens - 1;
    const bool here = r.sample_index >= 0 && last >= b.token_begin && last < b.token_end;
    req_slots[k] = j;
    sample_rows[k] = here ? last - b.token_begin : -1;
    sample_index[k] = r.sample_index;
    temperature[k] = r.sampling.temperature;
    top_p[k] = r.sampling.top_p;
    seed[k] = r.sampling.seed;
  }
  auto* counts = input_layout::at<std::int32_t>(block, L.counts);
  counts[0] = real;
  counts[1] = b.num_reqs();
  auto* dcp = input_layout::at<std::int32_t>(block, L.dcp);
  dcp[0] = options_.dcp_rank;
  dcp[1] = options_.dcp_world;
  e.run_tokens[static_cast<std::size_t>(u)] = run;
  return pages > 0 ? L.block_indices + static_cast<std::size_t>(pages) * sizeof(std::int32_t)
                   : L.positions + static_cast<std::size_t>(run) * sizeof(std::int32_t);
}

coro::task<step_ticket> step_runner::launch(const step_plan& plan) {
  if (plan.empty()) throw_engine_error(errc::empty_batch, detail::cat("step_runner::launch: step ", plan.step, " is empty"));
  if (plan.num_reqs() > options_.max_reqs)
    throw_engine_error(errc::no_capacity, detail::cat("step_runner::launch: step ", plan.step, " has ", plan.num_reqs(),
                                                      " requests; the buffers hold ", options_.max_reqs));
  if (plan.ubatches.size() > options_.max_ubatches || plan.ubatches.empty() ||
      static_cast<std::size_t>(plan.ubatches.size()) != plan.routes.size())
    throw_engine_error(errc::invalid_argument,
                       detail::cat("step_runner::launch: step ", plan.step, " has ", plan.ubatches.size(),
                                   " micro-batches and ", plan.routes.size(), " routes; at most ",
                                   options_.max_ubatches, " micro-batches are set up"));
  const auto r = static_cast<std::int32_t>(launched_ % static_cast<std::uint64_t>(options_.ring));
  ring_entry& e = *ring_[static_cast<std::size_t>(r)];
  if (e.in_use)
    throw_engine_error(errc::invalid_argument, detail::cat("step_runner::launch: step ", e.step,
                                                           " is not collected yet; at most ", options_.ring,
                                                           " steps can be in flight"));
  const std::int32_t n = plan.ubatches.size();
  std::size_t written = 0;
  for (std::int32_t u = 0; u < n; ++u) written = static_cast<std::size_t>(u) * layout_->slot_bytes + stage(plan, u, e);
  ++launched_;
  e.in_use = true;
  e.step = plan.step;
  e.num_reqs = plan.num_reqs();
  e.num_ubatches = n;
  for (auto& p : e.progress) p.store(0, std::memory_order_relaxed);

  gpu::stream_ref compute = scheduler_->compute_stream(0);
  ring_entry* ep = &e;
  compute.enqueue([ep] { ep->begin = std::chrono::steady_clock::now(); });
  // Copy-in: the staged blocks to the persistent buffers in one copy (the
  // unused tails of the fields between go along; nothing reads them), then
  // each micro-batch's token references resolved from the previous step's
  // sampled tokens, which the stream has produced by now whatever the host
  // knows.
  gpu::copy_async(inputs_dev_.span().first(written), std::span<const std::byte>(e.staging.data(), written), compute);
  const auto cap_t = static_cast<std::size_t>(options_.max_tokens);
  for (std::int32_t u = 0; u < n; ++u) {
    gpu::kernels::resolve_refs_args a;
    a.src = input_layout::at<const std::int32_t>(inputs_dev_.data() + static_cast<std::size_t>(u) * layout_->slot_bytes,
                                                 layout_->token_src);
    a.table = sampled_dev_.data();
    a.dst = token_ids_dev_.data() + static_cast<std::size_t>(u) * cap_t;
    a.count = e.run_tokens[static_cast<std::size_t>(u)];
    a.table_size = options_.max_reqs;
    gpu::kernels::enqueue_resolve_refs(device_->backend(), a, compute);
  }
  for (std::int32_t u = 0; u < n; ++u) model_->plan(plan, u, plan.ubatches[u], ios_[static_cast<std::size_t>(u)], compute);

  try {
    co_await scheduler_->run(plan.ubatches, [this, &plan, ep](ubatch_context& ctx) -> coro::task<void> {
      const std::int32_t u = ctx.index();
      const std::int32_t run_tokens = ep->run_tokens[static_cast<std::size_t>(u)];
      const dispatch_route& route = plan.routes[static_cast<std::size_t>(u)];
      const ubatch_io& io = ios_[static_cast<std::size_t>(u)];
      const auto n_stages = static_cast<std::int32_t>(stages_.size());
      graph_entry<segment_graphs>* graph = nullptr;
      if (route.mode != dispatch_mode::eager) {
        graph_cache<segment_graphs>& cache = caches_[static_cast<std::size_t>(u)];
        graph = cache.find(route.graph());
        if (graph == nullptr) {
          // Captured on first use, over the slot's persistent buffers.
          segment_graphs g;
          gpu::stream_ref s = ctx.compute_stream();
          g.stages.resize(stages_.size());
          for (std::int32_t k = 0; k < n_stages; ++k) {
            if (stages_[static_cast<std::size_t>(k)] != stage_kind::graph) continue;
            s.begin_capture();
            try {
              model_->enqueue_stage(k, io, run_tokens, s);
            } catch (...) {
              (void)s.end_capture();
              throw;
            }
            g.stages[static_cast<std::size_t>(k)] = s.end_capture().instantiate();
          }
          g.inputs = inputs_.record_capture();
          graph = &cache.insert(route.graph(), captured_graph<segment_graphs>{std::move(g), 1});
          ++stats_.graph_captures;
        } else {
          inputs_.verify(graph->graph().inputs);
        }
        ++stats_.graph_replays;
      } else {
        ++stats_.eager_runs;
      }
      std::int32_t collectives = 0;
      for (std::int32_t k = 0; k < n_stages; ++k) {
        const stage_kind kind = stages_[static_cast<std::size_t>(k)];
        if (kind == stage_kind::collective) {
          if (ctx.current_role() != gpu::stream_role::communication) co_await ctx.switch_to_comm();
          if (trace_ != nullptr) ctx.label(detail::cat("stage ", k, " collective"));
          model_->enqueue_stage(k, io, run_tokens, ctx.current_stream());
          const std::int32_t done = ++collectives;
          ctx.current_stream().enqueue([ep, u, done] { ep->progress[static_cast<std::size_t>(u)].store(done); });
          continue;
        }
        if (ctx.current_role() != gpu::stream_role::compute) co_await ctx.switch_to_compute();
        if (kind == stage_kind::graph && graph != nullptr) {
          if (trace_ != nullptr) ctx.label(detail::cat("stage ", k, " graph"));
          graph->graph().stages[static_cast<std::size_t>(k)].launch(ctx.current_stream());
        } else {
          if (trace_ != nullptr) ctx.label(detail::cat("stage ", k, kind == stage_kind::graph ? " eager" : " eager (per step)"));
          model_->enqueue_stage(k, io, run_tokens, ctx.current_stream());
        }
      }
    });
  } catch (...) {
    e.in_use = false;
    ++stats_.failures;
    throw;
  }
  // Copy-out: the sampled tokens (and logits) to the step's host slot,
  // before the end mark.
  const auto n_reqs = static_cast<std::size_t>(e.num_reqs);
  gpu::copy_async(e.sampled.first(n_reqs), gpu::device_span<const std::int32_t>(sampled_dev_.span().first(n_reqs)), compute);
  if (logits_dev_) {
    const std::size_t row = logits_dev_.size() / sampled_dev_.size();
    gpu::copy_async(e.logits.first(n_reqs * row), gpu::device_span<const float>(logits_dev_.span().first(n_reqs * row)), compute);
  }
  compute.enqueue([ep] { ep->end = std::chrono::steady_clock::now(); });
  compute.record(e.done);
  ++stats_.steps;
  co_return step_ticket{plan.step, r};
}

coro::task<step_outputs> step_runner::collect(step_ticket ticket) {
  if (ticket.ring_slot < 0 || ticket.ring_slot >= options_.ring)
    throw_engine_error(errc::invalid_argument, detail::cat("step_runner::collect: ring slot ", ticket.ring_slot, " is out of range"));
  ring_entry& e = *ring_[static_cast<std::size_t>(ticket.ring_slot)];
  if (!e.in_use || e.step != ticket.step)
    throw_engine_error(errc::invalid_argument,
                       detail::cat("step_runner::collect: step ", ticket.step, " is not in flight (collected twice?)"));
  auto [ec] = co_await e.done.async_wait(coro::as_tuple_task);
  e.in_use = false;
  if (ec) {
    ++stats_.failures;
    std::string what = "device work";
    const auto collectives = static_cast<std::int32_t>(collective_stage_.size());
    for (std::int32_t u = 0; u < e.num_ubatches && collectives > 0; ++u) {
      const std::int32_t done = e.progress[static_cast<std::size_t>(u)].load();
      if (done < collectives) {
        what = detail::cat("the collective at stage ", collective_stage_[static_cast<std::size_t>(done)],
                           " of micro-batch ", u, " (or compute before it)");
        break;
      }
    }
    throw_engine_error(errc::ubatch_failed, detail::cat("step_runner: step ", ticket.step, " on rank ", options_.dcp_rank,
                                                        " failed in ", what, ": ", ec.message()));
  }
  step_outputs out;
  out.step = e.step;
  out.sampled = std::span<const std::int32_t>(e.sampled.data(), static_cast<std::size_t>(e.num_reqs));
  if (!e.logits.empty()) {
    const std::size_t row = e.logits.size() / e.sampled.size();
    out.logits = std::span<const float>(e.logits.data(), static_cast<std::size_t>(e.num_reqs) * row);
  }
  out.device_begin = e.begin;
  out.device_end = e.end;
  co_return out;
}

coro::task<step_outputs> step_runner::run(const step_plan& plan) {
  const step_ticket t = co_await launch(plan);
  co_return co_await collect(t);
}

coro::task<void> step_runner::recover() {
  // The model first: aborting its communicators ends collectives that would
  // otherwise hold the streams until a timeout.
  model_->recover();
  for (gpu::stream_role role : {gpu::stream_role::compute, gpu::stream_role::communication}) {
    for (std::size_t i = 0; i < pool_->size(role); ++i) {
      auto [ec] = co_await pool_->at(role, i).async_wait(coro::as_tuple_task);
      (void)ec;  // already reported by the step that failed
    }
  }
  for (auto& e : ring_) e->in_use = false;
  make_streams();
}

}  // namespace cobatch::engine
