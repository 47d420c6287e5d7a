#include "cobatch/engine/step/step_planner.hpp"

#include "message.hpp"

#include <algorithm>
#include <utility>

namespace cobatch::engine {

std::int32_t step_plan::num_sampling() const noexcept {
  std::int32_t n = 0;
  for (const auto& r : requests) n += r.sample_index >= 0 ? 1 : 0;
  return n;
}

namespace {
void check_options(const planner_options& o) {
  constexpr std::string_view api = "step_planner";
  detail::require_at_least(api, "max_running", o.max_running, 1);
  detail::require_at_least(api, "num_pages", o.num_pages, 1);
  detail::require_at_least(api, "page_size", o.page_size, 1);
  detail::require_at_least(api, "dcp_world", o.dcp_world, 1);
  detail::require_at_least(api, "limits.max_context", o.limits.max_context, 1);
  detail::require_at_least(api, "limits.vocab_size", o.limits.vocab_size, 1);
  detail::require_at_least(api, "max_retries", o.max_retries, 0);
  if (o.ubatches.min < 1 || o.ubatches.max < o.ubatches.min)
    throw_engine_error(errc::invalid_argument, detail::cat("step_planner: ubatch limits [", o.ubatches.min, ", ",
                                                           o.ubatches.max, "] are not a range >= 1"));
  if (o.activations.activation_bytes_per_token > 0) {
    const auto budget = static_cast<std::uint64_t>(static_cast<double>(o.activations.free_bytes) *
                                                   o.activations.usable_fraction);
    if (budget < o.activations.activation_bytes_per_token)
      throw_engine_error(errc::no_capacity,
                         detail::cat("step_planner: activation memory of ", budget, " bytes holds no token of ",
                                     o.activations.activation_bytes_per_token, " bytes"));
  }
}
}  // namespace

step_planner::step_planner(planner_options options, dispatch_router router)
    : options_((check_options(options), options)),
      router_(std::move(router)),
      pages_(options.num_pages),
      table_(options.num_pages),
      tokens_per_page_(static_cast<std::int64_t>(options.page_size) * options.dcp_world),
      timing_(options.timing) {
  new_pages_.reserve(static_cast<std::size_t>(options_.num_pages));
  seqs_.reserve(static_cast<std::size_t>(options_.max_running) * 2);
  running_.reserve(static_cast<std::size_t>(options_.max_running));
}

std::uint32_t step_planner::new_seq() {
  if (!free_seqs_.empty()) {
    const std::uint32_t h = free_seqs_.back();
    free_seqs_.pop_back();
    return h;
  }
  seqs_.emplace_back();
  return static_cast<std::uint32_t>(seqs_.size() - 1);
}

bool step_planner::add(request_id id, generation_request request, step_updates& out) {
  std::error_code ec;
  validate(request, options_.limits, ec);
  std::string why;
  if (!ec) {
    const std::int64_t full = static_cast<std::int64_t>(request.prompt.size()) + request.max_tokens;
    const std::int32_t need = kv_pages_for(full, options_.page_size, options_.dcp_world);
    if (need > pages_.num_pages()) {
      ec = make_error_code(errc::no_capacity);
      why = detail::cat("step_planner: request ", id, " needs ", need, " KV pages for ", full,
                        " tokens; the pool holds ", pages_.num_pages());
    }
  } else {
    try {
      validate(request, options_.limits);
    } catch (const engine_error& e) {
      why = e.what();
    }
  }
  if (ec) {
    out.updates.push_back({id, static_cast<std::int32_t>(out.tokens.size()), 0, finish_reason::refused, ec, why});
    return false;
  }
  const std::uint32_t h = new_seq();
  seq& s = seqs_[h];
  s.id = id;
  s.arrival = ++arrivals_;
  s.state = seq_state::waiting;
  s.prompt_len = static_cast<std::int32_t>(request.prompt.size());
  s.tokens = std::move(request.prompt);
  s.last_token = s.tokens.back();  // validate() refused an empty prompt
  // Room for the first outputs; a long generation grows it as it goes.
  s.tokens.reserve(static_cast<std::size_t>(s.prompt_len + std::min(request.max_tokens, 256)));
  s.max_tokens = request.max_tokens;
  s.computed = 0;
  s.generated = 0;
  s.num_pending = 0;
  s.sampling = request.sampling;
  s.stop_tokens = std::move(request.stop_tokens);
  s.failures = 0;
  s.cancel_requested = false;
  s.admitted_once = false;
  s.scheduled_in = 0;
  by_id_[id] = h;
  waiting_.push_back(h);  // the newest arrival goes last
  ++live_;
  return true;
}

void step_planner::cancel(request_id id) {
  auto it = by_id_.find(id);
  if (it != by_id_.end() && !seqs_[it->second].cancel_requested) {
    seqs_[it->second].cancel_requested = true;
    ++cancels_pending_;
  }
}

void step_planner::finish(std::uint32_t h, finish_reason why, step_updates& out, std::error_code ec, std::string detail) {
  seq& s = seqs_[h];
  if (s.cancel_requested) --cancels_pending_;
  give_back(h);
  if (s.state == seq_state::running) {
    running_.erase(std::find(running_.begin(), running_.end(), h));
  } else if (s.state == seq_state::waiting) {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), h));
  }
  out.updates.push_back({s.id, static_cast<std::int32_t>(out.tokens.size()), 0, why, ec, std::move(detail)});
  by_id_.erase(s.id);
  s.state = seq_state::free;
  s.tokens.clear();
  s.stop_tokens.clear();
  free_seqs_.push_back(h);
  --live_;
}

std::int32_t step_planner::more_pages(std::uint32_t h, std::int64_t tokens) const noexcept {
  const std::int32_t held = table_.size(h);
  // Most steps of a decode stay within its last page: no division then.
  if (tokens <= held * tokens_per_page_) return 0;
  return kv_pages_for(tokens, options_.page_size, options_.dcp_world) - held;
}

void step_planner::take_pages(std::int32_t n, std::uint32_t h) {
  if (n <= 0) return;
  new_pages_.clear();
  pages_.allocate(n, new_pages_);  // callers checked available() first
  table_.append(h, new_pages_);
  high_water_ = std::max(high_water_, pages_.num_pages() - pages_.available());
}

void step_planner::give_back(std::uint32_t h) {
  pages_.release(table_.row(h));
  table_.release(h);
}

void step_planner::enqueue_waiting(std::uint32_t h) {
  const auto arrival = seqs_[h].arrival;
  auto at = std::upper_bound(waiting_.begin(), waiting_.end(), arrival,
                             [&](std::uint64_t a, std::uint32_t x) { return a < seqs_[x].arrival; });
  waiting_.insert(at, h);
}

void step_planner::insert_running(std::uint32_t h) {
  const auto arrival = seqs_[h].arrival;
  auto at = std::upper_bound(running_.begin(), running_.end(), arrival,
                             [&](std::uint64_t a, std::uint32_t x) { return a < seqs_[x].arrival; });
  running_.insert(at, h);
}

void step_planner::preempt(std::uint32_t h) {
  seq& s = seqs_[h];
  give_back(h);
  s.computed = 0;
  if (s.state == seq_state::running) running_.erase(std::find(running_.begin(), running_.end(), h));
  s.state = seq_state::waiting;
  enqueue_waiting(h);
  ++preemptions_;
}

bool step_planner::schedule(std::uint32_t h, std::int32_t chunk, step_plan& plan) {
  seq& s = seqs_[h];
  const std::int32_t length = s.length();
  const auto slot = static_cast<std::int32_t>(plan.requests.size());
  const bool samples = s.computed + chunk == length;
  plan.requests.push_back({s.id, h, plan.num_tokens, chunk, s.computed, samples ? s.generated : -1, s.sampling});
  const auto known = static_cast<std::int32_t>(s.tokens.size());
  const std::int32_t end = s.computed + chunk;
  const std::int32_t known_end = std::min(end, known);
  if (known_end == s.computed + 1 && known_end == known) {
    plan.token_ids.push_back(s.last_token);  // a decode's input
  } else if (known_end > s.computed) {
    plan.token_ids.insert(plan.token_ids.end(), s.tokens.begin() + s.computed, s.tokens.begin() + known_end);
  }
  // Only the last token can be unknown: the one the previous step samples.
  if (end > known) plan.token_ids.push_back(token_ref(s.pending[s.num_pending - 1].slot));
  for (std::int32_t t = s.computed; t < end; ++t) plan.positions.push_back(t);
  plan.num_tokens += chunk;
  s.computed += chunk;
  s.scheduled_in = plan.step;
  if (samples) {
    ++s.generated;
    s.pending[s.num_pending++] = {plan.step, slot};
  }
  return samples;
}

void step_planner::plan(std::int32_t token_budget, step_plan& plan, step_updates& out) {
  if (token_budget < 1)
    throw_engine_error(errc::invalid_argument, detail::cat("step_planner::plan: token budget ", token_budget, " < 1"));
  ++steps_;
  plan.step = steps_;
  plan.token_budget = token_budget;
  plan.num_tokens = 0;
  plan.dcp_world = options_.dcp_world;
  plan.page_size = options_.page_size;
  plan.requests.clear();
  plan.token_ids.clear();
  plan.positions.clear();
  plan.query_start_loc.clear();  // these four: filled by finalize()
  plan.seq_lens.clear();
  plan.block_begin.clear();
  plan.block_end.clear();
  // The writes a launched plan handed out are in its consumers' copies now.
  if (writes_handed_out_) {
    table_.clear_writes();
    writes_handed_out_ = false;
  }
  plan.routes.clear();
  plan.admitted.clear();
  plan.preempted.clear();

  std::int32_t left = token_budget;
  if (options_.activations.activation_bytes_per_token > 0) {
    const auto bytes = static_cast<std::uint64_t>(static_cast<double>(options_.activations.free_bytes) *
                                                  options_.activations.usable_fraction);
    const auto per_ubatch = static_cast<std::int64_t>(bytes / options_.activations.activation_bytes_per_token);
    left = static_cast<std::int32_t>(std::min<std::int64_t>(left, per_ubatch * options_.ubatches.max));
  }

  // 1. Cancelled requests leave; the step that may still read their pages was
  // issued before this one, so the pages are safe to hand out again.
  if (cancels_pending_ > 0) {  // a scan of every request only when one asked to leave
    scratch_.clear();
    for (std::uint32_t h : running_) if (seqs_[h].cancel_requested) scratch_.push_back(h);
    for (std::uint32_t h : waiting_) if (seqs_[h].cancel_requested) scratch_.push_back(h);
    for (std::uint32_t h : scratch_) finish(h, finish_reason::cancelled, out);
  }

  const auto max_reqs = static_cast<std::size_t>(options_.max_running);
  // 2. Running requests, oldest first.
  for (std::size_t i = 0; i < running_.size() && left > 0 && plan.requests.size() < max_reqs;) {
    const std::uint32_t h = running_[i];
    seq& s = seqs_[h];
    const std::int32_t length = s.length();
    const auto known = static_cast<std::int32_t>(s.tokens.size());
    if (s.generated >= s.max_tokens || s.computed >= length) {
      ++i;  // its last token is still on the way: nothing more to run
      continue;
    }
    // A token the host does not know must be the previous step's.
    if (length > known && (s.num_pending != 1 || s.pending[0].step + 1 != plan.step || s.computed != length - 1)) {
      ++i;
      continue;
    }
    const std::int32_t chunk = std::min(length - s.computed, left);
    const std::int32_t need = more_pages(h, s.computed + chunk);
    bool self_preempted = false;
    while (need > pages_.available()) {
      const std::uint32_t victim = running_.back();
      if (victim == h) {
        self_preempted = true;
        break;
      }
      plan.preempted.push_back(seqs_[victim].id);
      preempt(victim);
    }
    if (self_preempted) {
      plan.preempted.push_back(s.id);
      preempt(h);
      break;  // it was the youngest: nobody after it
    }
    take_pages(need, h);
    schedule(h, chunk, plan);
    left -= chunk;
    ++i;
  }

  // 3. Waiting requests in arrival order; the first that does not fit stops
  // admission so that no request overtakes an older one.
  while (!waiting_.empty() && left > 0 && plan.requests.size() < max_reqs) {
    const std::uint32_t h = waiting_.front();
    seq& s = seqs_[h];
    if (s.num_pending > 0) break;  // preempted while its last token is on the way
    const std::int32_t chunk = std::min(s.length() - s.computed, left);
    const std::int32_t need = more_pages(h, s.computed + chunk);
    if (need > pages_.available()) break;
    take_pages(need, h);
    waiting_.pop_front();
    s.state = seq_state::running;
    insert_running(h);
    if (!s.admitted_once) {
      s.admitted_once = true;
      ++admissions_;
      plan.admitted.push_back(s.id);
    }
    schedule(h, chunk, plan);
    left -= chunk;
  }
  finalize(plan);
}

void step_planner::finalize(step_plan& plan) {
  // The per-request arrays in one pass once every request is scheduled, so
  // that rows are named where they are after any move or compaction this
  // step caused. The rows themselves stay in the table.
  const std::size_t scheduled = plan.requests.size();
  plan.query_start_loc.resize(scheduled + 1);
  plan.seq_lens.resize(scheduled);
  plan.block_begin.resize(scheduled);
  plan.block_end.resize(scheduled);
  plan.query_start_loc[0] = 0;
  for (std::size_t i = 0; i < scheduled; ++i) {
    const scheduled_request& r = plan.requests[i];
    plan.query_start_loc[i + 1] = r.token_begin + r.num_tokens;
    plan.seq_lens[i] = r.context_before + r.num_tokens;
    const std::int32_t row = table_.begin(r.handle);
    plan.block_begin[i] = row;
    plan.block_end[i] = row + table_.size(r.handle);
  }
  plan.block_table = table_.entries();
  const auto writes = table_.writes();
  plan.block_writes.assign(writes.begin(), writes.end());
  plan.block_base = table_step_;
  if (plan.requests.empty()) {
    plan.ubatches = ubatch_plan{};
    return;
  }
  bool decode = true;
  for (const auto& r : plan.requests) decode = decode && r.num_tokens == 1;
  plan.phase = decode ? step_phase::decode : step_phase::prefill;

  const batch_view batch = plan.batch();
  if (options_.activations.activation_bytes_per_token > 0) {
    plan.sizing = choose_ubatch_count(plan.phase, plan.num_tokens, options_.activations, timing_, options_.ubatches);
  } else {
    const timing_choice t = timing_.choose(plan.phase, plan.num_tokens, options_.ubatches);
    plan.sizing = {};
    plan.sizing.num_ubatches = t.num_ubatches;
    plan.sizing.predicted = t.predicted;
    plan.sizing.reason = t.reason == timing_reason::target_met    ? sizing_reason::timing_target_met
                         : t.reason == timing_reason::best_effort ? sizing_reason::timing_best_effort
                                                                  : sizing_reason::no_timing_history;
  }
  // Consumers copy this plan's table: the next plan's writes update it.
  table_step_ = plan.step;
  writes_handed_out_ = true;
  const std::int32_t n = std::min(plan.sizing.num_ubatches, plan.num_tokens);
  slice_batch(batch, {.num_ubatches = n, .padded_tokens = plan.num_tokens}, options_.slicing, plan.ubatches);
  for (std::int32_t u = 0; u < plan.ubatches.size(); ++u) {
    const ubatch b = plan.ubatches[u];
    const auto tokens = static_cast<std::uint32_t>(b.real_tokens());
    const auto reqs = static_cast<std::uint32_t>(b.num_reqs());
    const dispatch_key key = tokens == reqs ? dispatch_key::uniform_decode(reqs, 1) : dispatch_key::mixed(tokens, reqs);
    plan.routes.push_back(router_.route(key));
  }
}

void step_planner::commit(const step_plan& plan, std::span<const std::int32_t> sampled, step_updates& out) {
  for (std::size_t i = 0; i < plan.requests.size(); ++i) {
    const scheduled_request& r = plan.requests[i];
    if (r.sample_index < 0) continue;
    seq& s = seqs_[r.handle];
    if (s.state == seq_state::free || s.id != r.id) continue;  // finished (cancelled, stopped) meanwhile
    if (s.num_pending == 0 || s.pending[0].step != plan.step || s.pending[0].slot != static_cast<std::int32_t>(i))
      continue;  // rolled back by a failure
    const std::int32_t token = sampled[i];
    s.pending[0] = s.pending[1];
    --s.num_pending;
    s.tokens.push_back(token);
    s.last_token = token;
    const auto first = static_cast<std::int32_t>(out.tokens.size());
    out.tokens.push_back(token);
    out.updates.push_back({s.id, first, 1, finish_reason::none, {}, {}});
    const std::int32_t produced = static_cast<std::int32_t>(s.tokens.size()) - s.prompt_len;
    const bool stop = std::find(s.stop_tokens.begin(), s.stop_tokens.end(), token) != s.stop_tokens.end();
    if (stop || produced >= s.max_tokens) {
      const request_id id = s.id;
      // The token and the finish travel in one update.
      out.updates.pop_back();
      finish(r.handle, stop ? finish_reason::stop : finish_reason::length, out);
      out.updates.back().id = id;
      out.updates.back().first_token = first;
      out.updates.back().token_count = 1;
    }
  }
}

void step_planner::fail(const step_plan& plan, std::error_code error, const std::string& detail, step_updates& out) {
  for (const scheduled_request& r : plan.requests) {
    seq& s = seqs_[r.handle];
    if (s.state == seq_state::free || s.id != r.id) continue;
    // Outputs of this step (and of any after it) will never arrive.
    while (s.num_pending > 0 && s.pending[s.num_pending - 1].step >= plan.step) {
      --s.num_pending;
      --s.generated;
    }
    // A request in several failed steps of one failure counts it once.
    if (s.scheduled_in >= plan.step) ++s.failures;
    s.scheduled_in = 0;
    if (s.failures > options_.max_retries) {
      finish(r.handle, finish_reason::failed, out, error, detail);
      continue;
    }
    if (s.state == seq_state::running) {
      preempt(r.handle);
      --preemptions_;  // a roll-back, not a preemption for memory
    } else {
      s.computed = 0;
    }
  }
}

planner_gauges step_planner::gauges() const noexcept {
  return {static_cast<std::int32_t>(waiting_.size()), static_cast<std::int32_t>(running_.size()),
          pages_.num_pages() - pages_.available(), pages_.num_pages(), high_water_, preemptions_, admissions_};
}

}  // namespace cobatch::engine
