#include "cobatch/engine/step/step_runner.hpp"

#include "cobatch/coro/use_task.hpp"
#include "cobatch/engine/ubatch/ubatch_error.hpp"

#include "message.hpp"

#include <algorithm>
#include <cstring>

namespace cobatch::engine {

namespace {
template <class T>
std::span<std::byte> bytes_of(std::vector<T>& v) {
  return std::as_writable_bytes(std::span<T>(v));
}
template <class T>
std::span<const std::byte> cbytes_of(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}
}  // namespace

// One micro-batch slot's persistent buffers: sized once, never moved.
struct step_runner::slot_buffers {
  std::vector<std::int32_t> token_src, token_ids, positions, query_start_loc, seq_lens, block_begin, block_end, req_slots,
      sample_rows, sample_index, counts, dcp;
  std::vector<float> temperature, top_p;
  std::vector<std::uint64_t> seed;
  // Ids in persistent_inputs, in the order stage() lists its inputs.
  std::array<buffer_id, 15> ids{};
  ubatch_io io;
};

// One micro-batch's inputs of one step, staged on the host.
struct step_runner::staging {
  std::vector<std::int32_t> token_src, positions, query_start_loc, seq_lens, block_begin, block_end, req_slots, sample_rows,
      sample_index, counts, dcp;
  std::vector<float> temperature, top_p;
  std::vector<std::uint64_t> seed;
  std::vector<step_input> inputs;
  copy_plan copy;
  std::int32_t real_tokens = 0;
  std::int32_t run_tokens = 0;
};

struct step_runner::ring_entry {
  bool in_use = false;
  std::uint64_t step = 0;
  std::int32_t num_reqs = 0;
  std::int32_t num_ubatches = 0;
  std::vector<staging> stages;
  std::vector<std::int32_t> sampled;
  std::vector<float> logits;
  // The block table entries the step writes: ranges, and their values in order.
  std::vector<block_range> table_writes;
  std::vector<std::int32_t> table_values;
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
  for (std::int32_t u = 0; u < o.max_ubatches; ++u) {
    auto b = std::make_unique<slot_buffers>();
    b->token_src.assign(cap_t, 0);
    b->token_ids.assign(cap_t, 0);
    b->positions.assign(cap_t, 0);
    b->query_start_loc.assign(cap_r + 1, 0);
    b->seq_lens.assign(cap_r, 0);
    b->block_begin.assign(cap_r, 0);
    b->block_end.assign(cap_r, 0);
    b->req_slots.assign(cap_r, 0);
    b->sample_rows.assign(cap_r, -1);
    b->sample_index.assign(cap_r, 0);
    b->counts.assign(2, 0);
    b->dcp.assign(2, 0);
    b->temperature.assign(cap_r, 0.0f);
    b->top_p.assign(cap_r, 1.0f);
    b->seed.assign(cap_r, 0);
    const std::string p = detail::cat("ubatch ", u, ".");
    std::size_t k = 0;
    b->ids[k++] = inputs_.add(p + "token_src", bytes_of(b->token_src));
    b->ids[k++] = inputs_.add(p + "positions", bytes_of(b->positions));
    b->ids[k++] = inputs_.add(p + "query_start_loc", bytes_of(b->query_start_loc));
    b->ids[k++] = inputs_.add(p + "seq_lens", bytes_of(b->seq_lens));
    b->ids[k++] = inputs_.add(p + "block_begin", bytes_of(b->block_begin));
    b->ids[k++] = inputs_.add(p + "block_end", bytes_of(b->block_end));
    b->ids[k++] = inputs_.add(p + "req_slots", bytes_of(b->req_slots));
    b->ids[k++] = inputs_.add(p + "sample_rows", bytes_of(b->sample_rows));
    b->ids[k++] = inputs_.add(p + "sample_index", bytes_of(b->sample_index));
    b->ids[k++] = inputs_.add(p + "counts", bytes_of(b->counts));
    b->ids[k++] = inputs_.add(p + "dcp", bytes_of(b->dcp));
    b->ids[k++] = inputs_.add(p + "temperature", bytes_of(b->temperature));
    b->ids[k++] = inputs_.add(p + "top_p", bytes_of(b->top_p));
    b->ids[k++] = inputs_.add(p + "seed", bytes_of(b->seed));
    b->ids[k++] = inputs_.add(p + "token_ids", bytes_of(b->token_ids));
    slots_.push_back(std::move(b));
    caches_.emplace_back(o.graphs);
  }
  table_.assign(static_cast<std::size_t>(o.max_pages), -1);
  inputs_.add("block_table", bytes_of(table_));  // not copied in whole: registered so graphs check its address
  sampled_.assign(cap_r, 0);
  if (o.keep_logits) logits_.assign(cap_r * static_cast<std::size_t>(info.vocab_size), 0.0f);
  for (std::int32_t u = 0; u < o.max_ubatches; ++u) {
    slot_buffers& b = *slots_[static_cast<std::size_t>(u)];
    b.io = ubatch_io{u,
                     o.max_tokens,
                     o.max_reqs,
                     o.max_pages,
                     info.vocab_size,
                     b.token_ids.data(),
                     b.positions.data(),
                     b.query_start_loc.data(),
                     b.seq_lens.data(),
                     b.block_begin.data(),
                     b.block_end.data(),
                     table_.data(),
                     b.req_slots.data(),
                     b.sample_rows.data(),
                     b.sample_index.data(),
                     b.temperature.data(),
                     b.top_p.data(),
                     b.seed.data(),
                     b.counts.data(),
                     b.dcp.data(),
                     sampled_.data(),
                     o.keep_logits ? logits_.data() : nullptr};
    model.bind(b.io);
  }
  for (std::int32_t r = 0; r < o.ring; ++r) {
    auto e = std::make_unique<ring_entry>();
    e->stages.resize(static_cast<std::size_t>(o.max_ubatches));
    e->sampled.assign(cap_r, 0);
    if (o.keep_logits) e->logits.assign(logits_.size(), 0.0f);
    e->progress = std::vector<std::atomic<std::int32_t>>(static_cast<std::size_t>(o.max_ubatches));
    e->done = device.make_event();
    ring_.push_back(std::move(e));
  }
  make_streams();
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

void step_runner::stage(const step_plan& plan, std::int32_t u, staging& st) const {
  const ubatch b = plan.ubatches[u];
  const dispatch_route& route = plan.routes[static_cast<std::size_t>(u)];
  st.real_tokens = b.real_tokens();
  st.run_tokens = route.mode == dispatch_mode::eager ? st.real_tokens : static_cast<std::int32_t>(route.run_tokens());
  if (st.run_tokens > options_.max_tokens)
    throw_engine_error(errc::no_capacity, detail::cat("step_runner: micro-batch ", u, " of step ", plan.step, " runs ",
                                                      st.run_tokens, " tokens; the buffers hold ", options_.max_tokens));
  const auto tb = plan.token_ids.begin() + b.token_begin;
  st.token_src.assign(tb, tb + st.real_tokens);
  const auto pb = plan.positions.begin() + b.token_begin;
  st.positions.assign(pb, pb + st.real_tokens);
  st.query_start_loc.assign(b.query_start_loc.begin(), b.query_start_loc.end());
  st.seq_lens.assign(b.seq_lens.begin(), b.seq_lens.end());
  // Rows of the shared table, not their pages: O(requests) per step.
  const auto rb = plan.block_begin.begin() + b.req_begin;
  const auto re = plan.block_end.begin() + b.req_begin;
  st.block_begin.assign(rb, rb + b.num_reqs());
  st.block_end.assign(re, re + b.num_reqs());
  const auto table_size = static_cast<std::int32_t>(plan.block_table.size());
  for (std::size_t j = 0; j < st.block_begin.size(); ++j) {
    if (st.block_begin[j] < 0 || st.block_begin[j] > st.block_end[j] || st.block_end[j] > table_size)
      throw_engine_error(errc::invalid_argument,
                         detail::cat("step_runner: step ", plan.step, " request ", b.req_begin + static_cast<std::int32_t>(j),
                                     "'s row [", st.block_begin[j], ", ", st.block_end[j], ") is not in its block table of ",
                                     table_size, " entries"));
  }
  st.req_slots.clear();
  st.sample_rows.clear();
  st.sample_index.clear();
  st.temperature.clear();
  st.top_p.clear();
  st.seed.clear();
  for (std::int32_t j = b.req_begin; j < b.req_end; ++j) {
    const scheduled_request& r = plan.requests[static_cast<std::size_t>(j)];
    const std::int32_t last = r.token_begin + r.num_tokens - 1;
    const bool here = r.sample_index >= 0 && last >= b.token_begin && last < b.token_end;
    st.req_slots.push_back(j);
    st.sample_rows.push_back(here ? last - b.token_begin : -1);
    st.sample_index.push_back(r.sample_index);
    st.temperature.push_back(r.sampling.temperature);
    st.top_p.push_back(r.sampling.top_p);
    st.seed.push_back(r.sampling.seed);
  }
  st.counts.assign({st.real_tokens, b.num_reqs()});
  st.dcp.assign({options_.dcp_rank, options_.dcp_world});
  const slot_buffers& s = *slots_[static_cast<std::size_t>(u)];
  const std::size_t run_bytes = static_cast<std::size_t>(st.run_tokens) * sizeof(std::int32_t);
  st.inputs.clear();
  std::size_t k = 0;
  auto add = [&](std::span<const std::byte> src, std::size_t padded) { st.inputs.push_back({s.ids[k++], src, padded}); };
  add(cbytes_of(st.token_src), run_bytes);
  add(cbytes_of(st.positions), run_bytes);
  add(cbytes_of(st.query_start_loc), st.query_start_loc.size() * sizeof(std::int32_t));
  add(cbytes_of(st.seq_lens), st.seq_lens.size() * sizeof(std::int32_t));
  add(cbytes_of(st.block_begin), st.block_begin.size() * sizeof(std::int32_t));
  add(cbytes_of(st.block_end), st.block_end.size() * sizeof(std::int32_t));
  add(cbytes_of(st.req_slots), st.req_slots.size() * sizeof(std::int32_t));
  add(cbytes_of(st.sample_rows), st.sample_rows.size() * sizeof(std::int32_t));
  add(cbytes_of(st.sample_index), st.sample_index.size() * sizeof(std::int32_t));
  add(cbytes_of(st.counts), 2 * sizeof(std::int32_t));
  add(cbytes_of(st.dcp), 2 * sizeof(std::int32_t));
  add(cbytes_of(st.temperature), st.temperature.size() * sizeof(float));
  add(cbytes_of(st.top_p), st.top_p.size() * sizeof(float));
  add(cbytes_of(st.seed), st.seed.size() * sizeof(std::uint64_t));
  inputs_.plan_copy_in(st.inputs, st.copy);
}

void step_runner::stage_table(const step_plan& plan, ring_entry& e) const {
  const std::size_t size = plan.block_table.size();
  if (size > table_.size())
    throw_engine_error(errc::no_capacity, detail::cat("step_runner: step ", plan.step, "'s block table has ", size,
                                                      " entries; the buffer holds ", table_.size()));
  e.table_writes.clear();
  e.table_values.clear();
  if (plan.block_base != 0 && plan.block_base == table_step_) {
    // The copy holds step block_base's table (or will, once the stream gets
    // there): only the entries written since then travel.
    for (const block_range& w : plan.block_writes) {
      if (w.offset < 0 || w.count < 0 || static_cast<std::size_t>(w.offset) + static_cast<std::size_t>(w.count) > size)
        throw_engine_error(errc::invalid_argument,
                           detail::cat("step_runner: step ", plan.step, " writes block table entries [", w.offset, ", +",
                                       w.count, ") outside its ", size, " entries"));
      const auto from = plan.block_table.begin() + w.offset;
      e.table_writes.push_back(w);
      e.table_values.insert(e.table_values.end(), from, from + w.count);
    }
  } else if (size > 0) {
    e.table_writes.push_back({0, static_cast<std::int32_t>(size)});
    e.table_values.assign(plan.block_table.begin(), plan.block_table.end());
  }
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
  if (plan.block_begin.size() != plan.requests.size() || plan.block_end.size() != plan.requests.size())
    throw_engine_error(errc::length_mismatch,
                       detail::cat("step_runner::launch: step ", plan.step, " has ", plan.num_reqs(), " requests, ",
                                   plan.block_begin.size(), " block_begin and ", plan.block_end.size(), " block_end"));
  const std::int32_t n = plan.ubatches.size();
  for (std::int32_t u = 0; u < n; ++u) stage(plan, u, e.stages[static_cast<std::size_t>(u)]);
  stage_table(plan, e);
  ++launched_;
  e.in_use = true;
  e.step = plan.step;
  e.num_reqs = plan.num_reqs();
  e.num_ubatches = n;
  for (auto& p : e.progress) p.store(0, std::memory_order_relaxed);

  gpu::stream_ref compute = scheduler_->compute_stream(0);
  ring_entry* ep = &e;
  compute.enqueue([ep] { ep->begin = std::chrono::steady_clock::now(); });
  // Copy-in: staged inputs to the persistent buffers (padding zeroed), then
  // the token references resolved from the previous step's outputs, which
  // the stream has produced by now whatever the host knows.
  compute.enqueue([this, ep] {
    const std::int32_t* values = ep->table_values.data();
    for (const block_range& w : ep->table_writes) {
      std::copy_n(values, w.count, table_.data() + w.offset);
      values += w.count;
    }
    for (std::int32_t u = 0; u < ep->num_ubatches; ++u) {
      const staging& st = ep->stages[static_cast<std::size_t>(u)];
      execute_on_host(st.copy);
      slot_buffers& b = *slots_[static_cast<std::size_t>(u)];
      for (std::int32_t i = 0; i < st.run_tokens; ++i) {
        const std::int32_t src = b.token_src[static_cast<std::size_t>(i)];
        b.token_ids[static_cast<std::size_t>(i)] = is_token_ref(src) ? sampled_[static_cast<std::size_t>(token_ref_slot(src))] : src;
      }
    }
  });
  table_step_ = plan.step;
  for (std::int32_t u = 0; u < n; ++u) model_->plan(plan, u, plan.ubatches[u], slots_[static_cast<std::size_t>(u)]->io, compute);

  try {
    co_await scheduler_->run(plan.ubatches, [this, &plan, ep](ubatch_context& ctx) -> coro::task<void> {
      const std::int32_t u = ctx.index();
      const staging& st = ep->stages[static_cast<std::size_t>(u)];
      const dispatch_route& route = plan.routes[static_cast<std::size_t>(u)];
      const ubatch_io& io = slots_[static_cast<std::size_t>(u)]->io;
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
              model_->enqueue_stage(k, io, st.run_tokens, s);
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
          model_->enqueue_stage(k, io, st.run_tokens, ctx.current_stream());
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
          model_->enqueue_stage(k, io, st.run_tokens, ctx.current_stream());
        }
      }
    });
  } catch (...) {
    e.in_use = false;
    ++stats_.failures;
    table_step_ = 0;  // whether the copy-in ran is unknown: the next launch copies the table whole
    throw;
  }
  // Copy-out: the sampled tokens (and logits) to the step's host slot.
  compute.enqueue([this, ep] {
    const auto n_reqs = static_cast<std::size_t>(ep->num_reqs);
    std::copy_n(sampled_.begin(), n_reqs, ep->sampled.begin());
    if (!logits_.empty()) {
      const std::size_t row = logits_.size() / sampled_.size();
      std::copy_n(logits_.begin(), n_reqs * row, ep->logits.begin());
    }
    ep->end = std::chrono::steady_clock::now();
  });
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
  table_step_ = 0;  // a failed stream may have skipped a copy-in
  make_streams();
}

}  // namespace cobatch::engine
