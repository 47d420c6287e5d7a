// step_planner: the scheduler's state (waiting and running requests, their
// KV pages) and the planning of one step from it. Pure CPU, no device call,
// no allocation in steady state. The requests' pages live in a block_table
// kept across steps: a step's cost follows the requests it schedules and the
// pages that changed, not the pages the running requests hold.
//
// Per step, in this order:
//   1. cancelled requests leave and free their pages;
//   2. running requests, oldest first, get their next tokens: one for a
//      decode, a chunk of the rest for a prompt still being prefilled, all
//      within the token budget. One that needs a page when none is free
//      preempts the youngest running request (its pages are freed, it goes
//      back to waiting and is recomputed later; it may be itself);
//   3. waiting requests, in arrival order, are admitted while the budget,
//      the running limit and the free pages allow their first chunk; the
//      first that does not fit stops admission, so none overtakes another;
//   4. the micro-batch count (existing sizing: activation memory is a floor,
//      the learned step timing a preference), the cuts (slicing), and per
//      micro-batch the graph route (capture ladder padding, graph or eager).
//
// Overlap: a request sampled in the step still running on the device has a
// next token the host does not know yet. The plan refers to it
// (token_ref) and commit() fills it in when that step's tokens arrive; a
// request finished by a stop token meanwhile wastes one slot, as vLLM's
// async scheduling does.
#pragma once

#include <cobatch/engine/dispatch/dispatch_router.hpp>
#include <cobatch/engine/attention/dcp.hpp>
#include <cobatch/engine/attention/paged_kv_cache.hpp>
#include <cobatch/engine/step/block_table.hpp>
#include <cobatch/engine/step/request.hpp>
#include <cobatch/engine/step/step_plan.hpp>
#include <cobatch/engine/ubatch/ubatch_sizing.hpp>
#include <cobatch/engine/ubatch/ubatch_slicing.hpp>

#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <system_error>
#include <unordered_map>
#include <vector>

namespace cobatch::engine {

/// KV pages a request of `tokens` tokens holds on each rank when
/// decode-context parallelism deals its tokens over `dcp_world` ranks one by
/// one: as many as the largest shard (rank 0's) needs, so one block table row
/// serves every rank (a rank with a shorter shard uses a prefix of it).
constexpr std::int32_t kv_pages_for(std::int64_t tokens, std::int32_t page_size, std::int32_t dcp_world) noexcept {
  return page_pool::pages_for(dcp_layout{dcp_world, 0, 1}.local_length(tokens), page_size);
}

struct planner_options {
  std::int32_t max_running = 256;   ///< requests in one step, >= 1
  std::int32_t num_pages = 1024;    ///< KV pages per rank, >= 1
  std::int32_t page_size = 16;      ///< tokens per page, >= 1
  std::int32_t dcp_world = 1;       ///< decode-context-parallel ranks, >= 1
  request_limits limits{};          ///< what the model accepts
  ubatch_count_limits ubatches{1, 2};
  slice_policy slicing{};
  /// Activation memory of a step; activation_bytes_per_token 0 leaves it out.
  activation_memory activations{};
  timing_options timing{.target_step_time = std::chrono::milliseconds(50)};
  /// Times a request is re-run after a step it was in failed, before it
  /// finishes as failed.
  std::int32_t max_retries = 1;
};

/// One request's news from plan(), commit() or fail().
struct request_update {
  request_id id = 0;
  std::int32_t first_token = 0;  ///< its new tokens: step_updates::tokens[first_token, +count)
  std::int32_t token_count = 0;
  finish_reason finish = finish_reason::none;
  std::error_code error;         ///< why it was refused or failed
  std::string detail;            ///< the error's text
};

struct step_updates {
  std::vector<request_update> updates;
  std::vector<std::int32_t> tokens;
  void clear() noexcept {
    updates.clear();
    tokens.clear();
  }
};

struct planner_gauges {
  std::int32_t waiting = 0;
  std::int32_t running = 0;
  std::int32_t pages_in_use = 0;
  std::int32_t pages_total = 0;
  std::int32_t pages_high_water = 0;
  std::uint64_t preemptions = 0;
  std::uint64_t admitted = 0;
};

class step_planner {
 public:
  /// Throws engine_error naming the first bad option; `router` gives each
  /// micro-batch its graph route.
  step_planner(planner_options options, dispatch_router router);

  /// Takes a request under `id`. A request that can never run (bad input, or
  /// more pages than the pool holds) is refused at once: an update with
  /// finish_reason::refused and the reason is added to `out`, and false is
  /// returned. Others wait for admission.
  bool add(request_id id, generation_request request, step_updates& out);
  /// Marks a request to leave at the next plan() (its pages are freed then,
  /// after the step that may still read them was issued). Unknown or
  /// finished ids are ignored.
  void cancel(request_id id);

  /// Plans the next step into `plan` (its storage is reused) within
  /// `token_budget` tokens. Requests that finish while planning (cancelled)
  /// are reported in `out`. An empty plan means nothing can run now.
  /// Throws engine_error(invalid_argument) for a budget < 1.
  void plan(std::int32_t token_budget, step_plan& plan, step_updates& out);

  /// The step `plan` ran: `sampled[i]` is the token of plan.requests[i]
  /// (read where it samples). Appends tokens and finishes in `out`.
  void commit(const step_plan& plan, std::span<const std::int32_t> sampled, step_updates& out);
  /// The step `plan` failed with `error`: its requests are rolled back to
  /// what the host knows and re-queued, or finish as failed once they have
  /// failed more than max_retries times. Call for every step planned after
  /// it too (they read its outputs), newest last.
  void fail(const step_plan& plan, std::error_code error, const std::string& detail, step_updates& out);

  /// Records a measured step for the micro-batch count's timing model.
  void record_timing(const step_sample& sample) { timing_.record(sample); }

  planner_gauges gauges() const noexcept;
  /// Requests not finished yet (waiting or running).
  std::size_t live() const noexcept { return live_; }
  const planner_options& options() const noexcept { return options_; }
  const page_pool& pages() const noexcept { return pages_; }
  /// Every running request's pages (row = scheduled_request::handle).
  const engine::block_table& table() const noexcept { return table_; }
  std::int32_t pages_high_water() const noexcept { return high_water_; }
  const dispatch_router& router() const noexcept { return router_; }

 private:
  enum class seq_state : std::uint8_t { free, waiting, running };
  struct pending_token {
    std::uint64_t step;
    std::int32_t slot;
  };
  struct seq {
    request_id id = 0;
    std::uint64_t arrival = 0;
    seq_state state = seq_state::free;
    std::vector<std::int32_t> tokens;  // known to the host
    // tokens.back(), beside the fields a step reads: a decode's input comes
    // from here, not from a separate heap block per request (a cache miss each).
    std::int32_t last_token = 0;
    std::int32_t prompt_len = 0;
    std::int32_t max_tokens = 0;
    std::int32_t computed = 0;   // tokens whose KV is (being) written
    std::int32_t generated = 0;  // outputs sampled, known or not
    pending_token pending[2]{};  // outputs sampled but not known on the host, oldest first
    std::int32_t num_pending = 0;
    sampling_params sampling;
    std::vector<std::int32_t> stop_tokens;
    std::int32_t failures = 0;
    bool cancel_requested = false;
    bool admitted_once = false;
    std::uint64_t scheduled_in = 0;  // last step it was scheduled in
    std::int32_t length() const noexcept { return prompt_len + generated; }
  };

  std::uint32_t new_seq();
  void finish(std::uint32_t h, finish_reason why, step_updates& out, std::error_code ec = {}, std::string detail = {});
  void preempt(std::uint32_t h);
  /// Pages request h must add to hold `tokens` tokens (rank 0's shard).
  std::int32_t more_pages(std::uint32_t h, std::int64_t tokens) const noexcept;
  void take_pages(std::int32_t n, std::uint32_t h);
  void give_back(std::uint32_t h);
  void enqueue_waiting(std::uint32_t h);
  void insert_running(std::uint32_t h);
  bool schedule(std::uint32_t h, std::int32_t chunk, step_plan& plan);
  void finalize(step_plan& plan);

  planner_options options_;
  dispatch_router router_;
  page_pool pages_;
  engine::block_table table_;
  std::vector<std::int32_t> new_pages_;
  std::int64_t tokens_per_page_;  // tokens of a request one page of its row covers: page_size x dcp_world
  std::uint64_t table_step_ = 0;  // the last non-empty plan: its table is what block_writes update
  bool writes_handed_out_ = false;
  std::int32_t high_water_ = 0;
  step_timing_model timing_;
  std::vector<seq> seqs_;
  std::vector<std::uint32_t> free_seqs_;
  std::unordered_map<request_id, std::uint32_t> by_id_;
  std::deque<std::uint32_t> waiting_;  // by arrival
  std::vector<std::uint32_t> running_;  // by arrival
  std::vector<std::uint32_t> scratch_;
  std::uint64_t arrivals_ = 0;
  std::uint64_t steps_ = 0;
  std::uint64_t preemptions_ = 0;
  std::uint64_t admissions_ = 0;
  std::size_t live_ = 0;
  std::size_t cancels_pending_ = 0;
};

}  // namespace cobatch::engine
