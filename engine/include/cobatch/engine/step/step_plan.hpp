// step_plan: everything one step runs, decided on the host before any device
// work: which requests, how many tokens each, their positions and pages, the
// micro-batch cuts, and how each micro-batch is dispatched (graph or eager,
// padded to which rung). The planner fills it; the runner reads it.
//
// Layout (vLLM's): request i of the step owns tokens
// [query_start_loc[i], query_start_loc[i+1]); seq_lens[i] counts its context
// including this step's tokens; its KV pages are
// block_table[block_begin[i], block_end[i]): CSR whose rows are ranges of a
// table that persists from step to step (the planner's block_table), not a
// table rebuilt per step. A step writes only block_writes (the pages decodes
// crossed into, the rows of admitted requests), so its cost follows what
// changed, not the pages the running requests hold; a consumer that keeps a
// copy of the table applies those writes and nothing else (the step runner
// does not yet: it packs each micro-batch's rows into that micro-batch's
// input block, which its one host-to-device copy carries). Rows are ragged: a context costs the pages it holds, not
// the longest. Under decode-context parallelism over W ranks, token position
// p lives on rank p % W, in slot (p / W) % page_size of page
// block_table[block_begin[i] + (p / W) / page_size]; a rank with a shorter
// shard reads a prefix of the row.
#pragma once

#include <cobatch/engine/batch.hpp>
#include <cobatch/engine/dispatch/dispatch_router.hpp>
#include <cobatch/engine/step/block_table.hpp>
#include <cobatch/engine/step/request.hpp>
#include <cobatch/engine/ubatch/ubatch_sizing.hpp>
#include <cobatch/engine/ubatch/ubatch_slicing.hpp>

#include <cstdint>
#include <span>
#include <vector>

namespace cobatch::engine {

/// A token input that is not known on the host yet: the token the previous
/// step samples for its request `slot`. Encoded in step_plan::token_ids as
/// -(1 + slot) so that the device resolves it from the previous step's
/// output buffer and the host never waits for it.
constexpr std::int32_t token_ref(std::int32_t previous_slot) noexcept { return -1 - previous_slot; }
constexpr bool is_token_ref(std::int32_t token) noexcept { return token < 0; }
constexpr std::int32_t token_ref_slot(std::int32_t token) noexcept { return -1 - token; }

struct scheduled_request {
  request_id id = 0;
  std::uint32_t handle = 0;          ///< the planner's own index for it
  std::int32_t token_begin = 0;      ///< first of its tokens in the step
  std::int32_t num_tokens = 0;       ///< query tokens this step (a prefill chunk, or 1 for a decode)
  std::int32_t context_before = 0;   ///< tokens already in its KV cache
  /// Index (in the request's output) of the token this step samples for it,
  /// or -1 when the step ends inside its prompt (a chunk of a long prefill).
  std::int32_t sample_index = -1;
  sampling_params sampling{};
};

class step_plan {
 public:
  std::uint64_t step = 0;  ///< sequence number, from 1
  step_phase phase = step_phase::decode;
  std::int32_t token_budget = 0;  ///< what the planner was allowed
  std::int32_t num_tokens = 0;
  std::int32_t dcp_world = 1;
  std::int32_t page_size = 0;

  std::vector<scheduled_request> requests;  ///< slot i = requests[i]
  std::vector<std::int32_t> token_ids;      ///< num_tokens: ids, or token_ref()s
  std::vector<std::int32_t> positions;      ///< num_tokens
  std::vector<std::int32_t> query_start_loc;
  std::vector<std::int32_t> seq_lens;
  std::vector<std::int32_t> block_begin;  ///< requests.size(): first entry of request i's row in block_table
  std::vector<std::int32_t> block_end;    ///< requests.size(): one past its last (rank 0's page count)
  /// Every row's pages, borrowed from the planner: valid, and unchanged,
  /// until its next plan() (a launch copies what it needs).
  std::span<const std::int32_t> block_table;
  /// Entries of block_table written since the table of step block_base; with
  /// block_base 0 (no earlier table, or one not launched) a copy takes it whole.
  std::vector<block_range> block_writes;
  std::uint64_t block_base = 0;

  ubatch_plan ubatches;
  std::vector<dispatch_route> routes;  ///< one per micro-batch
  sizing_decision sizing{};

  std::vector<request_id> admitted;   ///< first scheduled this step, in arrival order
  std::vector<request_id> preempted;  ///< lost their pages this step (recomputed later)

  bool empty() const noexcept { return requests.empty(); }
  std::int32_t num_reqs() const noexcept { return static_cast<std::int32_t>(requests.size()); }
  batch_view batch() const noexcept { return {query_start_loc, seq_lens, num_tokens}; }
  /// Requests that sample a token this step.
  std::int32_t num_sampling() const noexcept;
};

}  // namespace cobatch::engine
